//! Requests of the device-facing format, parsed once, at the edge: the
//! subject names the function, the headers the options
//! ([`RequestOptions`]). A malformed request is refused here with a 400
//! that names the header; nothing further in handles raw header text.

use std::time::Duration;

use async_nats::HeaderMap;
use comfaas_schemas::names::{headers as h, Subjects, INBOX_PREFIX};
use comfaas_schemas::{
    parse_duration, validate_function_name, InvalidValue, InvocationError, Placement, Procs,
};

use crate::reply;

/// The function an `invoke` or `event` subject names, checked.
pub fn function_of<'a>(subjects: &Subjects, subject: &'a str) -> Result<&'a str, InvocationError> {
    let function = subjects
        .function_of(subject)
        .ok_or_else(|| InvocationError::bad_request(format!("`{subject}` names no function")))?;
    validate_function_name(function).map_err(|e| InvocationError::bad_request(e.0))?;
    Ok(function)
}

/// Whether `subject` is shaped like a reply subject (an inbox): `_INBOX.`
/// then one or more tokens, none empty, none a wildcard, no whitespace.
/// A node and a dispatcher publish an answer only on such a subject:
/// whoever sends a request chooses its reply subject, and answering on
/// `$JS.API.…`, `$KV.…` or `comfaas.…` would let them make the service
/// purge a stream, write a bucket or forge a result with its identity.
/// This holds in every mode, with or without NATS permissions.
pub fn is_reply_subject(subject: &str) -> bool {
    let Some(rest) = subject
        .strip_prefix(INBOX_PREFIX)
        .and_then(|r| r.strip_prefix('.'))
    else {
        return false;
    };
    rest.split('.').all(|token| {
        !token.is_empty()
            && token != "*"
            && token != ">"
            && !token
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
    })
}

/// What a request's headers ask for; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// `Comfaas-Timeout`: the run's time limit.
    pub timeout: Option<Duration>,
    /// `Comfaas-Placement`: where it must run.
    pub placement: Option<Placement>,
    /// `Comfaas-Procs`: MPI processes, a count or a range.
    pub procs: Option<Procs>,
    /// `Comfaas-Input-Object`: an object in `comfaas_inputs` that is the input.
    pub input_object: Option<String>,
}

impl RequestOptions {
    /// Reads the options from `headers`; a value that does not parse is a
    /// 400 naming its header.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<Self, InvocationError> {
        let Some(headers) = headers else {
            return Ok(Self::default());
        };
        Ok(Self {
            timeout: parsed(headers, h::TIMEOUT, parse_duration)?,
            placement: parsed(headers, h::PLACEMENT, |v| v.parse())?,
            procs: parsed(headers, h::PROCS, |v| v.parse())?,
            input_object: reply::get(headers, h::INPUT_OBJECT),
        })
    }
}

/// The `Nats-Msg-Id` a device gave its event, echoed on the result so it
/// can correlate them, made safe for a header.
pub fn msg_id(headers: Option<&HeaderMap>) -> Option<String> {
    headers
        .and_then(|hm| reply::get(hm, h::MSG_ID))
        .map(|id| reply::header_text(&id))
}

fn parsed<T>(
    headers: &HeaderMap,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
) -> Result<Option<T>, InvocationError> {
    reply::get(headers, name)
        .map(|value| parse(&value))
        .transpose()
        .map_err(|e| InvocationError::bad_request(format!("header {name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, *value);
        }
        map
    }

    #[test]
    fn options_parse_or_name_the_bad_header() {
        let ok = headers(&[
            (h::TIMEOUT, "2s"),
            (h::PLACEMENT, "node:edge-1"),
            (h::PROCS, "4-16"),
            (h::INPUT_OBJECT, "sha256-ab"),
        ]);
        assert_eq!(
            RequestOptions::from_headers(Some(&ok)),
            Ok(RequestOptions {
                timeout: Some(Duration::from_secs(2)),
                placement: Some(Placement::Node("edge-1".into())),
                procs: Some(Procs { min: 4, max: 16 }),
                input_object: Some("sha256-ab".into()),
            })
        );
        assert_eq!(
            RequestOptions::from_headers(None),
            Ok(RequestOptions::default())
        );
        for (name, value) in [
            (h::TIMEOUT, "soon"),
            (h::PLACEMENT, "mars"),
            (h::PROCS, "0"),
        ] {
            let error =
                RequestOptions::from_headers(Some(&headers(&[(name, value)]))).expect_err(value);
            assert_eq!(error.code, comfaas_schemas::ErrorCode::BadRequest);
            assert!(
                error.message.starts_with(&format!("header {name}: ")),
                "{error}"
            );
        }
    }

    #[test]
    fn only_inboxes_are_reply_subjects() {
        for ok in ["_INBOX.abc", "_INBOX.abc.1", "_INBOX.UAB3XYZ.kq9.42"] {
            assert!(is_reply_subject(ok), "{ok}");
        }
        for bad in [
            "$JS.API.STREAM.PURGE.COMFAAS_RESULTS",
            "$KV.comfaas_functions.x",
            "$SYS.REQ.SERVER.PING",
            "$O.comfaas_packages.C.x",
            "comfaas.result.x",
            "comfaas.work.edge-1",
            "_INBOX",
            "_INBOX.",
            "_INBOX..a",
            "_INBOX.a.",
            "_INBOX.*",
            "_INBOX.a.>",
            "_INBOX.a*b",
            "_INBOX.a b",
            "_INBOX.a\tb",
            "_INBOXES.a",
            "x._INBOX.a",
            "",
        ] {
            assert!(!is_reply_subject(bad), "{bad}");
        }
    }

    #[test]
    fn subjects_name_a_valid_function_or_are_refused() {
        let s = Subjects::default();
        assert_eq!(function_of(&s, "comfaas.invoke.hello"), Ok("hello"));
        assert_eq!(
            function_of(&s, "comfaas.work.hello").map_err(|e| e.message),
            Err("`comfaas.work.hello` names no function".to_owned())
        );
        assert!(function_of(&s, "comfaas.invoke.Bad!").is_err());
        assert_eq!(
            msg_id(Some(&headers(&[(h::MSG_ID, " id-1 ")]))),
            Some("id-1".into())
        );
    }
}

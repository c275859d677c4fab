//! Reply headers of the device-facing format, written and read in one
//! place: every [`InvocationError`] becomes headers here and nowhere else.

use async_nats::header::{HeaderName, HeaderValue};
use async_nats::HeaderMap;
use comfaas_schemas::{names::headers as h, ErrorCode, InvocationError, Tier};

/// Longest error text put in a header; the rest is cut.
const MAX_ERROR_TEXT: usize = 2048;

/// Who answered an invocation and how long it ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyMeta {
    /// The invocation's id.
    pub invocation_id: String,
    /// The node that ran it, when one did.
    pub node: Option<String>,
    /// That node's tier.
    pub tier: Option<Tier>,
    /// Run time of the function, ms.
    pub duration_ms: Option<u64>,
    /// Time it waited for a slot in the node's queue, ms.
    pub queue_ms: Option<u64>,
    /// Time the node took to get its large input, ms.
    pub fetch_ms: Option<u64>,
}

/// Headers of a successful reply.
pub fn ok(meta: &ReplyMeta) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static(h::STATUS), h::STATUS_OK);
    add_meta(&mut headers, meta);
    headers
}

/// Headers of an error reply: `Comfaas-Status: error` plus the micro error pair.
pub fn error(error: &InvocationError, meta: &ReplyMeta) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(h::STATUS, h::STATUS_ERROR);
    headers.insert(h::ERROR_CODE, error.code.as_u16().to_string().as_str());
    headers.insert(h::ERROR, header_text(&error.message).as_str());
    add_meta(&mut headers, meta);
    headers
}

/// `headers` as published on the result subject: with `Comfaas-Function`.
pub fn for_result(headers: &HeaderMap, function: &str) -> HeaderMap {
    let mut headers = headers.clone();
    headers.insert(h::FUNCTION, header_text(function).as_str());
    headers
}

/// `headers` of an outcome the node already sent to the requester, as the
/// headers-only notice to the dispatcher: with `Comfaas-Replied: true`.
pub fn notice(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    headers.insert(h::REPLIED, "true");
    headers
}

/// Whether a work reply is such a notice: the requester has its answer.
pub fn delivered(headers: &HeaderMap) -> bool {
    headers.get(h::REPLIED).is_some()
}

/// The function's run time a reply reports (`Comfaas-Duration-Ms`), ms.
pub fn run_ms(headers: &HeaderMap) -> Option<f64> {
    get(headers, h::DURATION_MS).and_then(|ms| ms.parse().ok())
}

/// Names the object in `comfaas_outputs` that holds a large output.
pub fn set_output_object(headers: &mut HeaderMap, name: &str) {
    headers.insert(h::OUTPUT_OBJECT, header_text(name).as_str());
}

/// Echoes the `Nats-Msg-Id` a device gave its event (already made safe by
/// `request::msg_id`), so it can match the result to the event.
pub fn set_msg_id(headers: &mut HeaderMap, msg_id: &str) {
    headers.insert(h::MSG_ID, header_text(msg_id).as_str());
}

// Written on every reply: names made from the constants as they are (no
// check, no copy), values copied once.
fn add_meta(headers: &mut HeaderMap, meta: &ReplyMeta) {
    if !meta.invocation_id.is_empty() {
        let id = header_value(&meta.invocation_id);
        headers.insert(HeaderName::from_static(h::INVOCATION_ID), id.as_ref());
    }
    if let Some(node) = &meta.node {
        headers.insert(
            HeaderName::from_static(h::NODE),
            header_value(node).as_ref(),
        );
    }
    if let Some(tier) = meta.tier {
        headers.insert(HeaderName::from_static(h::TIER), tier.as_str());
    }
    for (name, ms) in [
        (h::DURATION_MS, meta.duration_ms),
        (h::QUEUE_MS, meta.queue_ms),
        (h::FETCH_MS, meta.fetch_ms),
    ] {
        if let Some(ms) = ms {
            headers.insert(HeaderName::from_static(name), HeaderValue::from(ms));
        }
    }
}

/// `text` as [`header_text`] makes it, not copied when it already is so.
fn header_value(text: &str) -> std::borrow::Cow<'_, str> {
    let safe = text.len() <= MAX_ERROR_TEXT
        && !text.chars().any(char::is_control)
        && text.trim().len() == text.len();
    if safe {
        std::borrow::Cow::Borrowed(text)
    } else {
        std::borrow::Cow::Owned(header_text(text))
    }
}

/// Makes `text` safe for a header value: one line, bounded length.
pub fn header_text(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = line.trim();
    if trimmed.len() != line.len() {
        line = trimmed.to_owned();
    }
    if line.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

/// What a reply says, read back from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `Comfaas-Status: ok`.
    Ok,
    /// `Comfaas-Status: error` with its code and text.
    Error {
        /// The code, when it is one of ours.
        code: Option<ErrorCode>,
        /// The raw numeric code.
        raw_code: String,
        /// The error text.
        message: String,
    },
    /// No `Comfaas-Status` header: not a comfaas reply.
    Unknown,
}

/// Reads the outcome of a reply.
pub fn outcome(headers: Option<&HeaderMap>) -> Outcome {
    let Some(headers) = headers else {
        return Outcome::Unknown;
    };
    match headers.get(h::STATUS).map(|v| v.as_str()) {
        Some(h::STATUS_OK) => Outcome::Ok,
        Some(h::STATUS_ERROR) => {
            let raw_code = get(headers, h::ERROR_CODE).unwrap_or_default();
            Outcome::Error {
                code: raw_code.parse().ok().and_then(ErrorCode::from_u16),
                raw_code,
                message: get(headers, h::ERROR).unwrap_or_default(),
            }
        }
        _ => Outcome::Unknown,
    }
}

/// The body an error result carries on the result subject:
/// `{"status":"error","code":404,"error":"…"}` from its headers. Whoever
/// reads results there (an MQTT device sees no headers) learns the code
/// and why, and never the run's stderr, which only the requester's direct
/// reply and the logs (operators, observers) carry. `None` for an `ok`
/// reply, whose body is its output.
pub fn result_error_body(headers: &HeaderMap) -> Option<bytes::Bytes> {
    let (code, message) = error_of(headers);
    (code != 0).then(|| {
        serde_json::json!({ "status": h::STATUS_ERROR, "code": code, "error": message })
            .to_string()
            .into()
    })
}

/// The numeric code and text of an error reply (`0` and an empty text
/// when it is not one).
pub fn error_of(headers: &HeaderMap) -> (u16, String) {
    match outcome(Some(headers)) {
        Outcome::Error {
            raw_code, message, ..
        } => (raw_code.parse().unwrap_or(0), message),
        _ => (0, String::new()),
    }
}

/// A header's value as text.
pub fn get(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_headers_read_back() {
        let meta = ReplyMeta {
            invocation_id: "i1".into(),
            node: Some("edge-1".into()),
            tier: Some(Tier::Edge),
            duration_ms: Some(12),
            queue_ms: Some(3),
            fetch_ms: Some(0),
        };
        let failed = InvocationError::function_failed("exit 1:\nTraceback\r\n");
        let headers = error(&failed, &meta);
        assert_eq!(
            outcome(Some(&headers)),
            Outcome::Error {
                code: Some(ErrorCode::FunctionFailed),
                raw_code: "500".into(),
                message: "exit 1: Traceback".into(),
            }
        );
        assert_eq!(get(&headers, h::NODE).as_deref(), Some("edge-1"));
        assert_eq!(get(&headers, h::DURATION_MS).as_deref(), Some("12"));
        assert_eq!(get(&headers, h::QUEUE_MS).as_deref(), Some("3"));
        assert_eq!(get(&headers, h::FETCH_MS).as_deref(), Some("0"));
        assert_eq!(outcome(Some(&ok(&meta))), Outcome::Ok);
        assert_eq!(outcome(None), Outcome::Unknown);
    }

    #[test]
    fn results_and_notices_carry_their_marks() {
        let meta = ReplyMeta {
            invocation_id: "i1".into(),
            duration_ms: Some(7),
            ..ReplyMeta::default()
        };
        let mut headers = ok(&meta);
        assert_eq!(run_ms(&headers), Some(7.0));
        assert!(!delivered(&headers));
        assert!(delivered(&notice(&headers)));
        let result = for_result(&headers, "hello");
        assert_eq!(get(&result, h::FUNCTION).as_deref(), Some("hello"));
        set_output_object(&mut headers, "i1");
        set_msg_id(&mut headers, "dev-1");
        assert_eq!(get(&headers, h::OUTPUT_OBJECT).as_deref(), Some("i1"));
        assert_eq!(get(&headers, h::MSG_ID).as_deref(), Some("dev-1"));
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        let text = "é".repeat(MAX_ERROR_TEXT);
        let cut = header_text(&text);
        assert!(cut.len() <= MAX_ERROR_TEXT + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}

//! A warm comfaas handler in Rust: [`serve`] runs a function in handler
//! mode, one process serving many invocations, so that the function is a
//! closure and not a protocol.
//!
//! ```no_run
//! fn main() -> std::io::Result<()> {
//!     let mut calls = 0u64; // kept between calls: the process stays warm
//!     comfaas_handler::serve(|input: &[u8]| {
//!         calls += 1;
//!         if input.is_empty() {
//!             return Err("empty input".to_owned());
//!         }
//!         Ok(input.to_vec())
//!     })
//! }
//! ```
//!
//! Build the binary and ship it in an `exec` bundle with `mode =
//! "handler"`. The crate has no dependencies, so a bundle's own build can
//! use it offline as a path dependency. The protocol, the same for every
//! runtime: a request is a 4-byte big-endian length and the input on
//! stdin; an answer is a status byte ([`OK`], [`ERROR`], [`READY`]), a
//! 4-byte big-endian length and the output on stdout; after each call the
//! worker writes [`CALL_END`] on stderr, so the executor knows which log
//! lines belong to which call.
//!
//! stdout carries the protocol: a handler logs with `eprintln!`, never
//! `println!` (the executor would answer that call with a protocol error
//! and start a new worker).

use std::io::{BufReader, BufWriter, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Status of an answer: the handler's output follows.
pub const OK: u8 = 0;
/// Status of an answer: the handler failed; its message follows.
pub const ERROR: u8 = 1;
/// Status of the first frame: the worker is loaded and waits for calls.
pub const READY: u8 = 2;
/// What the worker writes on stderr after each call.
pub const CALL_END: &[u8] = b"\x00comfaas-call-end\x00";

/// Serves calls with `handle` until stdin closes (then `Ok`). An `Err`
/// from `handle`, or a panic in it, fails that call only: its message is
/// the call's error, and the worker goes on serving.
pub fn serve<F>(handle: F) -> std::io::Result<()>
where
    F: FnMut(&[u8]) -> Result<Vec<u8>, String>,
{
    serve_on(
        std::io::stdin().lock(),
        std::io::stdout().lock(),
        std::io::stderr(),
        handle,
    )
}

/// [`serve`] on other streams (pipes, sockets, tests).
pub fn serve_on<R, W, E, F>(input: R, output: W, mut log: E, mut handle: F) -> std::io::Result<()>
where
    R: Read,
    W: Write,
    E: Write,
    F: FnMut(&[u8]) -> Result<Vec<u8>, String>,
{
    let mut input = BufReader::new(input);
    let mut output = BufWriter::new(output);
    frame(&mut output, READY, b"ready")?;
    let mut data = Vec::new();
    loop {
        let mut head = [0u8; 4];
        match input.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        data.resize(u32::from_be_bytes(head) as usize, 0);
        input.read_exact(&mut data)?;
        let (status, answer) = match catch_unwind(AssertUnwindSafe(|| handle(&data))) {
            Ok(Ok(out)) => (OK, out),
            Ok(Err(message)) => (ERROR, message.into_bytes()),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                (ERROR, format!("handler panicked: {why}").into_bytes())
            }
        };
        // What the call printed, then the marker, then the answer.
        log.write_all(CALL_END)?;
        log.flush()?;
        frame(&mut output, status, &answer)?;
    }
}

fn frame<W: Write>(output: &mut W, status: u8, data: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an answer is at most 4 GiB",
        )
    })?;
    output.write_all(&[status])?;
    output.write_all(&len.to_be_bytes())?;
    output.write_all(data)?;
    output.flush()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(input: &[u8]) -> Vec<u8> {
        let mut frame = (input.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(input);
        frame
    }

    #[test]
    fn it_says_ready_answers_each_call_and_marks_its_end() {
        let mut stdin = request(b"abc");
        stdin.extend(request(b""));
        stdin.extend(request(b"boom"));
        stdin.extend(request(b"xy"));
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut calls = 0;
        serve_on(&stdin[..], &mut stdout, &mut stderr, |input: &[u8]| {
            calls += 1;
            match input {
                b"" => Err("empty".to_owned()),
                b"boom" => panic!("boom"),
                _ => Ok([input, calls.to_string().as_bytes()].concat()),
            }
        })
        .unwrap();
        let mut expected = vec![READY, 0, 0, 0, 5];
        expected.extend_from_slice(b"ready");
        for (status, data) in [
            (OK, &b"abc1"[..]),
            (ERROR, b"empty"),
            (ERROR, b"handler panicked: boom"),
            (OK, b"xy4"),
        ] {
            expected.push(status);
            expected.extend_from_slice(&(data.len() as u32).to_be_bytes());
            expected.extend_from_slice(data);
        }
        assert_eq!(stdout, expected);
        assert_eq!(stderr, CALL_END.repeat(4));
    }

    #[test]
    fn a_request_cut_short_is_an_error() {
        let stdin = [0u8, 0, 0, 9, b'a'];
        let err = serve_on(
            &stdin[..],
            Vec::new(),
            Vec::new(),
            |i: &[u8]| Ok(i.to_vec()),
        );
        assert_eq!(err.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    }
}

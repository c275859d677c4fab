//! An echo handler for `exec` bundles in handler mode: answers each input
//! with itself. Input `calls` answers how many calls this worker has
//! served (proof that it stays warm), `fail` fails the call, `panic`
//! panics in the handler, `exit` ends the process mid-call. The
//! integration tests and `comfaas-bench-runtimes` ship it in a bundle.

fn main() -> std::io::Result<()> {
    let mut calls = 0u64;
    comfaas_handler::serve(|input: &[u8]| {
        calls += 1;
        match input {
            b"calls" => Ok(calls.to_string().into_bytes()),
            b"fail" => Err(format!("asked to fail on call {calls}")),
            b"panic" => panic!("asked to panic on call {calls}"),
            b"exit" => std::process::exit(7),
            _ => Ok(input.to_vec()),
        }
    })
}

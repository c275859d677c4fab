//! The helpers handler mode ships with its runtimes, so a warm handler is a
//! function and not a protocol: a single C header on the include path of
//! every `c` build, and the `comfaas.Handler` Java interface compiled with
//! every `java` bundle (whose `main` runs a handler class in handler mode).
//! The Rust helper is the workspace crate `comfaas-handler` (`sdk/rust`),
//! used by `exec` bundles; the protocol itself is in the README.

/// File name of the C helper, `#include <comfaas_handler.h>`.
pub const C_HEADER_FILE: &str = "comfaas_handler.h";

/// The C helper: `int main(void) { return comfaas_serve(handle); }`.
pub const C_HEADER: &str = include_str!("../sdk/comfaas_handler.h");

/// Path of the Java helper's source under its source root.
pub const JAVA_HANDLER_FILE: &str = "comfaas/Handler.java";

/// The Java helper: the `comfaas.Handler` interface and its serve loop.
pub const JAVA_HANDLER: &str = include_str!("../sdk/java/comfaas/Handler.java");

/// The class whose `main` serves a handler class named by its argument.
pub const JAVA_HANDLER_CLASS: &str = "comfaas.Handler";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::handler::CALL_END;

    /// The helpers spell the marker and the statuses as the executor reads them.
    #[test]
    fn the_helpers_speak_the_executors_protocol() {
        assert_eq!(CALL_END, b"\x00comfaas-call-end\x00");
        assert!(C_HEADER.contains(r#""\0comfaas-call-end\0""#));
        assert!(JAVA_HANDLER.contains(r#""\0comfaas-call-end\0""#));
        assert_eq!(comfaas_handler_marker(), CALL_END);
    }

    fn comfaas_handler_marker() -> &'static [u8] {
        // The Rust helper's marker, read from its source: the crate is not
        // a dependency of the runtime.
        const SOURCE: &str = include_str!("../../../sdk/rust/src/lib.rs");
        assert!(SOURCE.contains(r#"pub const CALL_END: &[u8] = b"\x00comfaas-call-end\x00";"#));
        b"\x00comfaas-call-end\x00"
    }
}

//! The comfaas executor: installs deployed functions and runs invocations from its work subject.

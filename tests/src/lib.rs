//! Integration tests and benchmarks of comfaas against real nats-server processes.

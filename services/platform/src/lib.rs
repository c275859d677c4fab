//! Shared plumbing of the comfaas services: NATS connection, layered configuration, JetStream resources, the function registry, the embedded nats-server.

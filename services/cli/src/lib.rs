//! The comfaas command-line interface: dev, deploy, invoke, ls, nodes.

//! The placement model of comfaas: a pure function from a snapshot of node state to a choice of node.

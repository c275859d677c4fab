//! The comfaas dispatcher: places each invocation and event on a live node and relays the result.

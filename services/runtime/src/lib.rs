//! Function runtimes of comfaas: bundle packing and unpacking, installs into isolated environments, and bounded child-process runs.

//! Ferry's logging: diagnostics (through `tracing`) and the instruction log, written by one
//! dedicated background thread so that no hot path waits on a log file.

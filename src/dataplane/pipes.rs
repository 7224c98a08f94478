//! Pipe pool (filled in with the worker).

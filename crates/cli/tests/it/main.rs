//! The `tidings` binaries as operators run them: real processes, real sockets, real Redis and nginx where they take part.
//! One test binary per crate: each file below is a module.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod dev;
mod ops;
mod scale;
mod security;

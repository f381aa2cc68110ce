//! The broker against real Redis: one redis-server on a free port per test, and a real Redis Cluster.
//! One test binary per crate: each file below is a module.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod cluster;
mod redis;

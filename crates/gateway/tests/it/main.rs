//! Gateway integration tests: a real gateway on port 0, real WebSocket/HTTP

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]
//! clients, the in-memory broker as the event source.

mod support;

mod connect;
mod dashboard;
mod delivery;
mod edges;
mod garbage;
mod http;
mod messages;
mod shutdown;
mod slow;

//! `tidings-bench`: the load generator behind `scripts/bench` and
//! `scripts/bench-peers`. One lean WebSocket client ([`wire`]) for every
//! scenario and every server, the events and their scanners ([`events`]),
//! the servers' own CPU and memory ([`server_stats`]), and the scenarios:
//! [`fanout`] (also `latency`), [`idle`], [`connect`], [`reconnect`], and the raw writer
//! that bounds them all ([`ceiling`]).

pub mod ceiling;
pub mod connect;
pub mod connections;
pub mod events;
pub mod fanout;
pub mod idle;
pub mod reconnect;
pub mod report;
pub mod server_stats;
pub mod target;
pub mod wire;

//! The Tidings wire contract (SPEC §2–4): the event envelope and its validation,
//! the typed payloads of the well-known event types, client and server messages,
//! subscription filters, event ids, Redis key names, and the close and error codes.
//!
//! This crate does no I/O and depends on nothing async, so every other crate (and
//! any outside Rust client) can use it.

pub mod codes;
pub mod event;
pub mod filter;
pub mod id;
pub mod keys;
pub mod messages;
pub mod payloads;
pub mod timestamp;

pub use event::{Event, EventHeader, ValidationError};
pub use filter::{Filter, Selection};
pub use id::EventId;
pub use messages::{ClientMessage, ParseError, ServerMessage};

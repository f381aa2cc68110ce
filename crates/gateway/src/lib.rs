//! The Tidings gateway: holds client connections (WebSocket, SSE, polling) and
//! fans each event of a workspace out to the local connections that want it.
//!
//! Data flow: broker → [`hub::Hub::fan_out`] (encode once, filter, push to each
//! [`outbox::Outbox`]) → the connection's writer task → socket, or straight to
//! a WebSocket's [`socket::SharedSocket`] when its queue is empty. Entry points:
//! [`node::Node::new`], [`server::router`], [`server::serve`].

pub mod access;
pub mod admin;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod deadline;
pub mod error;
pub mod http;
pub mod hub;
pub mod jwks;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod rate;
pub mod replay;
pub mod server;
pub mod socket;
pub mod trace;
pub mod ws;

pub use config::GatewayConfig;
pub use node::Node;

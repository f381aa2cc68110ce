//! The chaos suite (issue 12): faults injected into real processes under
//! load, each scenario asserting zero loss after de-duplication by id, order
//! per workspace, and bounded recovery. The harness is `tidings_chaos`.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod cluster;
mod gateways;
mod live;
mod network;
mod publisher;
mod redis;
mod slow;

//! The publisher: every webhook fixture through its source module, and the HTTP edge on a real listener.
//! One test binary per crate: each file below is a module.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

mod catalog_and_cd;
mod github;
mod gitlab;

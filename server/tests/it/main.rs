//! The update server's integration tests: a real server on 127.0.0.1, real clients.
//!
//! One test binary for the crate: each file here was its own binary, and every one of them
//! compiled and linked the crate's whole dependency graph again (about 20-35 s of CPU each).

mod common;

mod attest;
mod auth;
mod dashboard;
mod e2e;
mod files;
mod interop;
mod ops;

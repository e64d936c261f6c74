//! Release signing and the TUF repository: integration tests.
//!
//! One test binary for the crate: each file here was its own binary, and every one of them
//! compiled and linked the crate's whole dependency graph again (about 20-35 s of CPU each).

mod common;

mod attacks;
mod repo;

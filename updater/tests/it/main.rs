//! The updater's integration tests: the shipped binary and library against real TUF repositories and servers on 127.0.0.1.
//!
//! One test binary for the crate: each file here was its own binary, and every one of them
//! compiled and linked the crate's whole dependency graph again (about 20-35 s of CPU each).

mod common;

mod attacks;
mod delta;
mod flaky;
mod l4t;
mod metrics;
mod powercut;
mod tpm;
mod tryboot;
mod tuf_client;
mod update;

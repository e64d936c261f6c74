//! edgeimg: build immutable A/B edge OS images with K3s, publish and flash them.
//!
//! The `edgeimg` binary is a thin dispatcher over this library (see `cli`).

pub mod bmap;
pub mod build;
pub mod cli;
pub mod config;
pub mod download;
pub mod flash;
pub mod fsutil;
pub mod gpt;
pub mod inspect;
pub mod logging;
pub mod net;
pub mod oci;
pub mod progress;
pub mod sbom;
pub mod tools;

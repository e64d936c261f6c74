//! The edgeimg device side: boot-time preparation (provisioning, K3s) and, as it grows,
//! the A/B updater. Everything takes the root directory it works on, so tests run on
//! temporary trees.

pub mod agent;
pub mod boot;
pub mod cli;
pub mod config;
pub mod crashpoint;
pub mod daemon;
pub mod decide;
pub mod delta;
pub mod fsutil;
pub mod health;
pub mod install;
pub mod k3s_drain;
pub mod k3s_prepare;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod provision;
pub mod report;
pub mod sdnotify;
pub mod state;
pub mod tpm;
pub mod tuf;

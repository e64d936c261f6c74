//! The edgeimg device side: boot-time preparation (provisioning, K3s) and, as it grows,
//! the A/B updater. Everything takes the root directory it works on, so tests run on
//! temporary trees.

pub mod cli;
pub mod fsutil;
pub mod k3s_prepare;
pub mod logging;
pub mod provision;

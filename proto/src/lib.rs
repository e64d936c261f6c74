//! Formats that the host tools and the device must agree on: slot and partition naming,
//! the update payload manifest, release manifests, rollout channels, device reports.

pub mod attest;
pub mod channel;
pub mod credential;
pub mod delta;
pub mod k3s;
pub mod l4t;
pub mod payload;
pub mod prometheus;
pub mod provision;
pub mod release;
pub mod report;
pub mod slot;
pub mod tryboot;
pub mod uboot;
pub mod verity;

pub use payload::{Artifact, ArtifactKind, BootFile, Payload, SlotBoot};
pub use slot::Slot;

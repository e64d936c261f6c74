//! Formats that the host tools and the device must agree on: slot and partition naming,
//! the update payload manifest, and (later) release manifests, channels and reports.

pub mod k3s;
pub mod payload;
pub mod provision;
pub mod slot;

pub use payload::{Artifact, ArtifactKind, BootFile, Payload, SlotBoot};
pub use slot::Slot;

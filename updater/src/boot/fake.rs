//! A file-backed boot loader with the same semantics as the real ones, for tests and for
//! trying the updater on a workstation: a JSON file records each slot's state, and
//! `simulate_boot` plays the loader at power-on (try an armed slot once, else the default).

use std::collections::BTreeMap;
use std::path::PathBuf;

use edgeimg_proto::Slot;
use serde::{Deserialize, Serialize};

use super::{io, write_boot_file, BootBackend, BootError, BootFiles, SlotStatus};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeState {
    pub booted: Option<Slot>,
    pub default: Option<Slot>,
    /// Slot → tries left (armed, not yet blessed).
    #[serde(default)]
    pub armed: BTreeMap<Slot, u32>,
    #[serde(default)]
    pub good: BTreeMap<Slot, bool>,
    /// Whether the booted slot was on trial.
    #[serde(default)]
    pub trial: bool,
}

pub struct Fake {
    pub state_file: PathBuf,
    pub boot_dir: PathBuf,
}

impl Fake {
    pub fn load(&self) -> Result<FakeState, BootError> {
        match std::fs::read(&self.state_file) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| BootError::State(format!("{}: {e}", self.state_file.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A fresh device: slot A good and booted.
                Ok(FakeState {
                    booted: Some(Slot::A),
                    default: Some(Slot::A),
                    good: BTreeMap::from([(Slot::A, true)]),
                    ..Default::default()
                })
            }
            Err(e) => Err(io(&self.state_file)(e)),
        }
    }

    fn save(&self, s: &FakeState) -> Result<(), BootError> {
        let b = serde_json::to_vec_pretty(s).map_err(|e| BootError::State(e.to_string()))?;
        crate::fsutil::atomic_write(&self.state_file, &b, 0o644).map_err(io(&self.state_file))
    }

    /// What the loader does at power-on. Returns the slot that boots.
    pub fn simulate_boot(&self) -> Result<Slot, BootError> {
        let mut s = self.load()?;
        let armed = s.armed.iter().find(|(_, &n)| n > 0).map(|(&slot, _)| slot);
        let slot = match armed {
            Some(slot) => {
                *s.armed.get_mut(&slot).expect("present") -= 1;
                s.trial = true;
                slot
            }
            None => {
                s.trial = false;
                s.default.ok_or_else(|| BootError::State("no default slot".into()))?
            }
        };
        s.booted = Some(slot);
        self.save(&s)?;
        Ok(slot)
    }
}

impl BootBackend for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn booted_slot(&self) -> Result<Slot, BootError> {
        self.load()?.booted.ok_or_else(|| BootError::State("not booted".into()))
    }

    fn is_trial(&self) -> Result<bool, BootError> {
        Ok(self.load()?.trial)
    }

    fn disarm(&self, slot: Slot) -> Result<(), BootError> {
        let mut s = self.load()?;
        if s.booted == Some(slot) {
            return Err(BootError::State(format!("refusing to disarm slot {slot}: it is the running system")));
        }
        s.armed.remove(&slot);
        s.good.insert(slot, false);
        if s.default == Some(slot) {
            s.default = s.booted;
        }
        self.save(&s)
    }

    fn stage(&self, slot: Slot, files: &BootFiles, tries: u32) -> Result<(), BootError> {
        if self.booted_slot()? == slot {
            return Err(BootError::State(format!("refusing to stage slot {slot}: it is the running system")));
        }
        for (src, dest) in &files.files {
            write_boot_file(&self.boot_dir.join(dest.trim_start_matches('/')), src)?;
        }
        let mut s = self.load()?;
        s.armed.insert(slot, tries);
        s.good.insert(slot, false);
        self.save(&s)
    }

    fn mark_good(&self, slot: Slot) -> Result<(), BootError> {
        let mut s = self.load()?;
        s.armed.remove(&slot);
        s.good.insert(slot, true);
        s.default = Some(slot);
        if s.booted == Some(slot) {
            s.trial = false;
        }
        self.save(&s)
    }

    fn set_default(&self, slot: Slot) -> Result<(), BootError> {
        let mut s = self.load()?;
        if !s.good.get(&slot).copied().unwrap_or(false) {
            return Err(BootError::State(format!("slot {slot} is not committed; it cannot become the default")));
        }
        s.default = Some(slot);
        self.save(&s)
    }

    fn status(&self) -> Result<Vec<SlotStatus>, BootError> {
        let s = self.load()?;
        Ok(Slot::ALL
            .iter()
            .map(|&slot| {
                let good = s.good.get(&slot).copied().unwrap_or(false);
                let tries = s.armed.get(&slot).copied();
                SlotStatus {
                    slot,
                    bootable: good || tries.is_some_and(|n| n > 0),
                    good,
                    tries_left: tries,
                    detail: if s.default == Some(slot) { "default".into() } else { String::new() },
                }
            })
            .collect())
    }
}

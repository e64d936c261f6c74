//! The fleet as the repository and the database see it together: per channel and board,
//! which release, how far it is rolled out, how many known devices may take it right now
//! (the same pure `BoardRollout::eligible` the devices run), and how the release is doing.

use std::collections::BTreeMap;

use edgeimg_proto::channel::BoardRollout;
use serde::Serialize;

use crate::db::{Device, DeviceStatus, ReleaseKey, ReleaseStats};
use crate::repo_view::RepoView;

#[derive(Debug, Clone, Serialize)]
pub struct BoardSummary {
    pub channel: String,
    pub board: String,
    /// The channel's entry for the board, as signed in the repository.
    pub rollout: BoardRollout,
    /// Percent of devices allowed now (0 while paused; waves applied).
    pub percent_now: u8,
    /// Approved devices of this board that last reported following this channel.
    pub devices: u64,
    /// Of those, how many the rollout allows now.
    pub eligible: u64,
    /// Of those, how many run the channel's release.
    pub on_release: u64,
    /// Of those, how many passed a TPM attestation of it.
    pub attested: u64,
    /// Of those on the release, how many are healthy: idle, no failing health check, and
    /// attested when the channel has `require_attestation`.
    pub healthy: u64,
    /// How the channel's current release is doing on this channel and board.
    pub stats: ReleaseStats,
}

/// One summary per (channel, board) in the repository.
pub fn summaries(
    view: &RepoView,
    devices: &[Device],
    stats: &BTreeMap<ReleaseKey, ReleaseStats>,
    now: i64,
) -> Vec<BoardSummary> {
    let mut out = Vec::new();
    for (name, ch) in &view.channels {
        for (board, r) in &ch.boards {
            let following: Vec<&Device> = devices
                .iter()
                .filter(|d| {
                    d.status == DeviceStatus::Approved
                        && d.board == *board
                        && d.channel.as_deref() == Some(name.as_str())
                })
                .collect();
            let key = ReleaseKey {
                channel: name.clone(),
                board: board.clone(),
                image: r.image.clone(),
                version: r.version.clone(),
            };
            let on_release: Vec<&&Device> =
                following.iter().filter(|d| d.image == r.image && d.version == r.version).collect();
            let attested = |d: &Device| d.attestation.as_ref().is_some_and(|a| a.passed_for(&r.version));
            let healthy = on_release
                .iter()
                .filter(|d| {
                    d.state.as_deref() == Some("idle")
                        && d.health.iter().all(|h| h.ok)
                        && (!r.require_attestation || attested(d))
                })
                .count() as u64;
            out.push(BoardSummary {
                channel: name.clone(),
                board: board.clone(),
                rollout: r.clone(),
                percent_now: r.percent_at(now),
                devices: following.len() as u64,
                eligible: following.iter().filter(|d| r.eligible(&d.id, now)).count() as u64,
                on_release: on_release.len() as u64,
                attested: on_release.iter().filter(|d| attested(d)).count() as u64,
                healthy,
                stats: stats.get(&key).cloned().unwrap_or_default(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeimg_proto::channel::{Channel, HaltPolicy};
    use edgeimg_proto::report::HealthResult;

    fn device(id: &str, channel: &str, version: &str) -> Device {
        Device {
            id: id.into(),
            status: DeviceStatus::Approved,
            public_key: String::new(),
            pending_key: None,
            board: "b".into(),
            image: "img".into(),
            version: version.into(),
            channel: Some(channel.into()),
            slot: None,
            state: None,
            security_floor: 0,
            last_seq: 0,
            last_seen: None,
            last_error: None,
            health: vec![],
            enrolled_at: 0,
            approved_at: None,
            tpm: false,
            ak_bound_at: None,
            ek_certificate: false,
            attestation: None,
        }
    }

    fn rollout(require_attestation: bool) -> BoardRollout {
        BoardRollout {
            image: "img".into(),
            version: "2.0.0".into(),
            percent: 100,
            waves: None,
            paused: false,
            pause_reason: None,
            rollback: false,
            require_attestation,
            halt: HaltPolicy::default(),
        }
    }

    #[test]
    fn a_channel_that_requires_attestation_counts_only_attested_devices_healthy() {
        use crate::db::AttestationState;
        let att = |result: &str, version: &str| {
            Some(AttestationState { result: result.into(), detail: String::new(), version: version.into(), at: 1 })
        };
        let mut devs: Vec<Device> = (0..5).map(|i| device(&format!("d-{i}"), "stable", "2.0.0")).collect();
        for d in &mut devs {
            d.state = Some("idle".into());
        }
        devs[0].attestation = att("passed", "2.0.0");
        devs[1].attestation = att("passed", "1.0.0"); // attested an older release
        devs[2].attestation = att("failed", "2.0.0");
        devs[3].attestation = att("passed", "2.0.0");
        devs[3].health = vec![HealthResult { check: "k3s".into(), ok: false, detail: String::new() }];
        // devs[4]: never attested
        for (require, healthy) in [(false, 4), (true, 1)] {
            let mut view = RepoView::default();
            view.channels.insert(
                "stable".into(),
                Channel { format: 1, name: "stable".into(), boards: [("b".to_string(), rollout(require))].into() },
            );
            let s = summaries(&view, &devs, &BTreeMap::new(), 0);
            assert_eq!(s[0].on_release, 5);
            assert_eq!(s[0].attested, 2, "passing attestations of 2.0.0");
            assert_eq!(s[0].healthy, healthy, "require_attestation = {require}");
        }
    }

    #[test]
    fn eligibility_follows_the_bucket() {
        let r = BoardRollout {
            image: "img".into(),
            version: "2.0.0".into(),
            percent: 30,
            waves: None,
            paused: false,
            pause_reason: None,
            rollback: false,
            require_attestation: false,
            halt: HaltPolicy::default(),
        };
        let mut view = RepoView::default();
        view.channels.insert(
            "stable".into(),
            Channel { format: 1, name: "stable".into(), boards: [("b".to_string(), r.clone())].into() },
        );
        let mut devs: Vec<Device> = (0..200).map(|i| device(&format!("d-{i}"), "stable", "1.0.0")).collect();
        devs.push(device("other-channel", "beta", "1.0.0"));
        devs[0].version = "2.0.0".into();
        let s = summaries(&view, &devs, &BTreeMap::new(), 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].devices, 200);
        let expect =
            devs[..200].iter().filter(|d| edgeimg_proto::channel::bucket(&d.id, "img", "2.0.0") < 3000).count();
        assert_eq!(s[0].eligible, expect as u64);
        assert_eq!(s[0].on_release, 1);
        assert_eq!(s[0].percent_now, 30);
    }
}

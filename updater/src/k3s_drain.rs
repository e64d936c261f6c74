//! Optional cordon + drain of this K3s node before rebooting into an update, and uncordon
//! once the update is committed (what system-upgrade-controller plans do, without one).

use std::path::Path;
use std::process::Command;

fn kubectl(root: &Path, args: &[&str]) -> bool {
    let k3s = root.join("usr/local/bin/k3s");
    if !k3s.exists() {
        return false;
    }
    let node = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let mut a: Vec<String> = vec!["kubectl".into()];
    a.extend(args.iter().map(|s| s.replace("{node}", &node)));
    match Command::new(&k3s).args(&a).status() {
        Ok(s) if s.success() => true,
        Ok(s) => {
            tracing::warn!("k3s {} failed: {s}", a.join(" "));
            false
        }
        Err(e) => {
            tracing::warn!("k3s {}: {e}", a.join(" "));
            false
        }
    }
}

pub fn drain(root: &Path) {
    kubectl(root, &["drain", "{node}", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=120s"]);
}

pub fn uncordon(root: &Path) {
    kubectl(root, &["uncordon", "{node}"]);
}

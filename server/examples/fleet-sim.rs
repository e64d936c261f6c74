//! A demo fleet for a real `edgeimg serve` (tests/dashboard/screenshot.sh uses it).
//!
//!     fleet-sim seed DIR      keys (DIR/keys, online half in DIR/online), releases and
//!                             channels in DIR/repo, the fleet token in DIR/enroll-token
//!     fleet-sim devices URL   enrol the demo devices and send their reports
//!
//! The fixtures are the integration tests' own (server/tests/it/common).

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::path::PathBuf;

use anyhow::{bail, Context};
use common::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["seed", dir] => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let keys = keyset(&dir.join("keys")).await;
            online_keys(&keys, &dir.join("online"));
            let repo = edgeimg_release::Repo::new(dir.join("repo"));
            seed::repo(&repo, &keys, &dir.join("builds")).await;
            std::fs::write(dir.join("enroll-token"), format!("{ENROLL_TOKEN}\n"))?;
            println!("seeded {}", dir.display());
            Ok(())
        }
        ["devices", url] => {
            let n = seed::devices(&Remote::new(url)).await;
            println!("{n} devices enrolled and reporting to {url}");
            Ok(())
        }
        _ => bail!("usage: fleet-sim seed DIR | fleet-sim devices URL"),
    }
}

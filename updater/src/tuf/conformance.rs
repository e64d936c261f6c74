//! The client-under-test protocol of the TUF conformance suite
//! (theupdateframework/tuf-conformance, CLIENT-CLI.md), over exactly the client the daemon
//! uses: `edgeimg-updater tuf-client --metadata-dir D init ROOT`, `... refresh`,
//! `... download --target-name N --target-base-url U --target-dir T`.
//!
//! Also a field tool: `tuf-client refresh` against a repository tells an operator whether
//! this device would accept it, without touching the updater's own state.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::metadata::check_hashes;
use super::{Client, HttpFetcher, Limits, TufError};
use crate::tuf::store::Store;

pub enum Action {
    Init(PathBuf),
    Refresh,
    Download,
}

pub struct Args {
    pub metadata_dir: PathBuf,
    pub metadata_url: Option<String>,
    pub target_names: Vec<String>,
    pub target_base_url: Option<String>,
    pub target_dir: Option<PathBuf>,
    pub action: Action,
}

fn with_slash(url: &str) -> String {
    format!("{}/", url.trim_end_matches('/'))
}

/// The file a target is stored under in `--target-dir`: one flat name per target path, so a
/// target downloaded again (new content) replaces the old file.
fn local_name(target: &str) -> String {
    super::fetch::encode_component(target)
}

pub async fn run(args: Args) -> Result<()> {
    let store = Store { dir: args.metadata_dir.clone() };
    if let Action::Init(root) = &args.action {
        // No checks (the protocol says so): the root is trusted as given, as on a device
        // where it comes with the image.
        std::fs::create_dir_all(&args.metadata_dir)
            .with_context(|| format!("creating {}", args.metadata_dir.display()))?;
        let bytes = std::fs::read(root).with_context(|| format!("reading the trusted root {}", root.display()))?;
        store.save("root", &bytes)?;
        return Ok(());
    }
    let metadata_url = args.metadata_url.as_deref().context("--metadata-url is required")?;
    let fetcher = HttpFetcher {
        client: crate::net::client(),
        metadata_base: with_slash(metadata_url),
        targets_base: with_slash(args.target_base_url.as_deref().unwrap_or(metadata_url)),
    };
    // The conformance suite sets the clock with faketime; a device takes it from
    // `[updater] time` (see Agent::trusted_now).
    let mut client = Client::new(fetcher, store, Limits::default(), Some(crate::state::now()))?;
    client.refresh().await?;
    if let Action::Download = args.action {
        let dir = args.target_dir.as_deref().context("--target-dir is required")?;
        for name in &args.target_names {
            download(&mut client, name, dir).await?;
        }
    }
    Ok(())
}

async fn download(client: &mut Client<HttpFetcher>, name: &str, dir: &Path) -> Result<()> {
    let Some(info) = client.target(name).await? else {
        bail!("{name} is not a target of this repository (or of any role trusted for it)");
    };
    let path = dir.join(local_name(name));
    // Cached copy with matching length and hashes: nothing to fetch.
    if let Ok(old) = std::fs::read(&path) {
        if check_hashes(name, &old, Some(info.length), Some(&info.hashes)).is_ok() {
            tracing::info!("{name}: already downloaded");
            return Ok(());
        }
    }
    let bytes = client.fetch_target(&info).await.map_err(|e: TufError| anyhow::anyhow!(e))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::fsutil::atomic_write(&path, &bytes, 0o644).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!("{name}: {} bytes verified", bytes.len());
    Ok(())
}

//! `edgeimg delta-stats OLD NEW`: what a device on OLD downloads to reach NEW by each
//! method, as a share of the full image compressed with zstd.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgeimg_proto::payload::{ArtifactKind, Payload};
use edgeimg_proto::Slot;

#[derive(Debug, clap::Args)]
pub struct DeltaStatsArgs {
    /// Build output directory of the release devices run now.
    pub old: PathBuf,
    /// Build output directory of the new release.
    pub new: PathBuf,
    /// zstd level of the full-image baseline.
    #[arg(long, default_value_t = 19)]
    pub level: i32,
    /// Also measure casync (default chunking) on the same pair, if it is installed.
    #[arg(long)]
    pub casync: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub method: String,
    pub bytes: u64,
    /// Share of the zstd-compressed full update (root image, hash tree, boot files).
    pub percent: f64,
    pub note: String,
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn payload(build: &Path) -> Result<Payload> {
    edgeimg_release::publish::read_payload(build).with_context(|| format!("reading the build in {}", build.display()))
}

pub fn run(a: DeltaStatsArgs, json: bool) -> Result<()> {
    let (old, new) = (payload(&a.old)?, payload(&a.new)?);
    if old.board != new.board || old.image != new.image {
        bail!(
            "{} is {} for {} but {} is {} for {}: deltas are made between releases of one image for one board",
            a.old.display(),
            old.image,
            old.board,
            a.new.display(),
            new.image,
            new.board
        );
    }
    let file = |b: &Path, name: &str| b.join("payload").join(name);
    let mut full_raw = 0u64;
    let mut full_zstd = 0u64;
    let mut delta = 0u64;
    let mut index = 0u64;
    let mut boot = 0u64;
    let mut notes = Vec::new();
    let started = Instant::now();
    for art in &new.artifacts {
        let needed = art.kind != ArtifactKind::BootFile
            || new.slots.get(&Slot::B).is_some_and(|s| s.files.iter().any(|f| f.artifact == art.name));
        if !needed {
            continue;
        }
        let n = read(&file(&a.new, &art.name))?;
        full_raw += n.len() as u64;
        let z = zstd::bulk::Compressor::new(a.level)
            .and_then(|mut c| {
                c.multithread(std::thread::available_parallelism().map_or(1, |p| p.get() as u32))?;
                c.compress(&n)
            })
            .context("zstd")?
            .len() as u64;
        full_zstd += z;
        match art.kind {
            ArtifactKind::BootFile => {
                // A device in slot A installs slot B: it copies a boot file slot A already
                // has, and otherwise takes a delta from slot A's file at the same place.
                let Some(path) = new.slots[&Slot::B].files.iter().find(|f| f.artifact == art.name).map(|f| &f.path)
                else {
                    continue;
                };
                let theirs = path.replacen(&Slot::B.boot_dir(), &Slot::A.boot_dir(), 1);
                let src = old.slots[&Slot::A]
                    .files
                    .iter()
                    .find(|f| f.path == theirs)
                    .and_then(|f| old.artifacts.iter().find(|o| o.name == f.artifact));
                match src {
                    Some(o) if o.sha256 == art.sha256 => notes.push(format!("{}: unchanged, copied", art.name)),
                    Some(o) => {
                        let (d, _) = edgeimg_release::delta::make(&art.name, &read(&file(&a.old, &o.name))?, &n)?;
                        notes.push(format!("{}: {} bytes", art.name, d.len()));
                        boot += d.len() as u64;
                    }
                    None => boot += z,
                }
            }
            ArtifactKind::VerityTree if computed_tree(&new, &a.new)?.as_deref() == Some(&n[..]) => {
                notes.push(format!("{}: computed on the device from the rebuilt root image", art.name));
            }
            _ => {
                let Some(o) = old.artifact(art.kind) else { bail!("{} has no {}", a.old.display(), art.name) };
                let src = read(&file(&a.old, &o.name))?;
                let (d, s) = edgeimg_release::delta::make(&art.name, &src, &n)?;
                anyhow::ensure!(
                    edgeimg_release::delta::apply(&d, &src)? == n,
                    "the delta of {} does not rebuild it (a bug: please report it)",
                    art.name
                );
                delta += d.len() as u64;
                let idx = edgeimg_release::delta::index(&art.name, &n)?.len() as u64;
                index += idx + edgeimg_release::delta::index_fetch_bytes(&src, &n);
                notes.push(format!(
                    "{}: {} ops, {} of {} blocks new, {} copied, {} zero",
                    art.name,
                    s.ops,
                    s.new_blocks,
                    n.len().div_ceil(4096),
                    s.copied_blocks,
                    s.zero_blocks
                ));
            }
        }
    }
    let pct = |b: u64| b as f64 * 100.0 / full_zstd.max(1) as f64;
    let mut rows = vec![
        Row {
            method: "full, raw".into(),
            bytes: full_raw,
            percent: pct(full_raw),
            note: "what updaters fetch without deltas".into(),
        },
        Row { method: format!("full, zstd -{}", a.level), bytes: full_zstd, percent: 100.0, note: String::new() },
        Row { method: "edgeimg delta".into(), bytes: delta + boot, percent: pct(delta + boot), note: notes.join("; ") },
        Row {
            method: "edgeimg block index".into(),
            bytes: index + boot,
            percent: pct(index + boot),
            note: "index + missing blocks by HTTP range (any source version)".into(),
        },
    ];
    if a.casync {
        let mut bytes = boot;
        // Like for like: where the device computes the hash tree, casync would not ship it either.
        let tree_computed = notes.iter().any(|n| n.contains("computed on the device"));
        let kinds: &[ArtifactKind] = if tree_computed {
            &[ArtifactKind::RootImage]
        } else {
            &[ArtifactKind::RootImage, ArtifactKind::VerityTree]
        };
        for &kind in kinds {
            if let (Some(o), Some(n)) = (old.artifact(kind), new.artifact(kind)) {
                bytes += casync(&file(&a.old, &o.name), &file(&a.new, &n.name))?;
            }
        }
        rows.push(Row {
            method: "casync (default chunks)".into(),
            bytes,
            percent: pct(bytes),
            note: "new chunks + index".into(),
        });
    }
    if json {
        println!("{}", serde_json::json!({"old": old.version, "new": new.version, "rows": rows}));
        return Ok(());
    }
    println!(
        "{} {} → {} for {} ({:.1} s)",
        new.image,
        old.version,
        new.version,
        new.board,
        started.elapsed().as_secs_f64()
    );
    println!("{:<26} {:>14} {:>9}  note", "method", "bytes", "share");
    for r in &rows {
        println!("{:<26} {:>14} {:>8.3}%  {}", r.method, r.bytes, r.percent, r.note);
    }
    Ok(())
}

/// The hash tree a device computes from the build's root image, if the build says how.
fn computed_tree(p: &Payload, build: &Path) -> Result<Option<Vec<u8>>> {
    let (Some(params), Some(root)) = (&p.verity, p.artifact(ArtifactKind::RootImage)) else { return Ok(None) };
    let bytes = read(&build.join("payload").join(&root.name))?;
    let mut blocks = bytes.chunks(4096);
    let (tree, _) = edgeimg_proto::verity::hash_device(params, |b| {
        let src = blocks.next().unwrap_or_default();
        b[..src.len()].copy_from_slice(src);
        b[src.len()..].fill(0);
        Ok(())
    })?;
    Ok(Some(tree))
}

/// Bytes casync needs: chunks of `new` missing from `old`'s store, plus `new`'s index.
fn casync(old: &Path, new: &Path) -> Result<u64> {
    let d = tempfile::tempdir()?;
    let store = d.path().join("store");
    let list = |store: &Path| -> BTreeSet<(PathBuf, u64)> {
        walk(store).into_iter().filter(|(p, _)| p.extension().is_some_and(|e| e == "cacnk")).collect()
    };
    let make = |src: &Path, caibx: &Path| -> Result<()> {
        let o = Command::new("casync")
            .arg("make")
            .arg(format!("--store={}", store.display()))
            .arg(caibx)
            .arg(src)
            .output()
            .context("running casync (apt-get install casync)")?;
        anyhow::ensure!(o.status.success(), "casync make {}: {}", src.display(), String::from_utf8_lossy(&o.stderr));
        Ok(())
    };
    make(old, &d.path().join("old.caibx"))?;
    let before = list(&store);
    let idx = d.path().join("new.caibx");
    make(new, &idx)?;
    let added: u64 = list(&store).difference(&before).map(|(_, n)| n).sum();
    Ok(added + std::fs::metadata(&idx)?.len())
}

fn walk(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => out.extend(walk(&p)),
                Ok(m) => out.push((p, m.len())),
                Err(_) => {}
            }
        }
    }
    out
}

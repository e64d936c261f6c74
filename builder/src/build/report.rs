//! `report.json`: what went into a build and what came out, with hashes, versions,
//! sizes and timings. Also writes `SHA256SUMS` for every output file.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use edgeimg_proto::{Payload, Slot};
use serde::Serialize;

use super::customize::Summary;
use super::rootfs::{BoardLayerSpec, RootfsSpec};
use super::rootimg::RootImage;
use crate::config::{Board, LoadedRecipe, Recipe, Source};
use crate::fsutil::{sha256_bytes, sha256_file};
use crate::gpt::Table;
use crate::sbom::DebPackage;

#[derive(Debug, Clone, Serialize)]
pub struct InputFile {
    pub path: String,
    pub sha256: String,
}

/// Hash every file a build reads besides the Debian archive: board, recipe, overlays,
/// file sources.
pub fn inputs(board: &Source, recipe: &LoadedRecipe) -> io::Result<Vec<InputFile>> {
    let mut v = vec![
        InputFile { path: board.path.display().to_string(), sha256: sha256_bytes(board.text.as_bytes()) },
        InputFile {
            path: recipe.source.path.display().to_string(),
            sha256: sha256_bytes(recipe.source.text.as_bytes()),
        },
    ];
    if let Some(sb) = &recipe.recipe.secure_boot {
        // The certificate, not the private key: the key's hash has no business in a report.
        let p = recipe.dir.join(&sb.cert);
        v.push(InputFile { path: p.display().to_string(), sha256: sha256_file(&p)? });
    }
    for f in &recipe.recipe.files {
        if let Some(s) = &f.source {
            let p = recipe.dir.join(s);
            v.push(InputFile { path: p.display().to_string(), sha256: sha256_file(&p)? });
        }
    }
    for o in &recipe.recipe.rootfs.overlays {
        let mut files = Vec::new();
        let mut stack = vec![recipe.dir.join(o)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        files.sort();
        for p in files {
            let sha256 = if p.is_symlink() {
                sha256_bytes(std::fs::read_link(&p)?.as_os_str().as_encoded_bytes())
            } else {
                sha256_file(&p)?
            };
            v.push(InputFile { path: p.display().to_string(), sha256 });
        }
    }
    Ok(v)
}

/// The build id: a hash of every input, so two builds with the same id are the same build.
pub fn build_id(rootfs_key: &str, version: &str, epoch: u64, inputs: &[InputFile]) -> String {
    let mut s =
        format!("edgeimg {}\nrootfs {rootfs_key}\nversion {version}\nepoch {epoch}\n", env!("CARGO_PKG_VERSION"));
    for i in inputs {
        // Paths differ between checkouts; only content counts.
        s.push_str(&format!("input {}\n", i.sha256));
    }
    sha256_bytes(s.as_bytes())[..24].to_string()
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub label: String,
    pub type_guid: String,
    pub partuuid: String,
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub edgeimg_version: String,
    pub build_id: String,
    pub board: String,
    pub arch: String,
    pub image: String,
    pub version: String,
    pub source_date_epoch: u64,
    pub inputs: Vec<InputFile>,
    pub debian: serde_json::Value,
    pub tools: BTreeMap<String, String>,
    pub kernel_version: String,
    pub packages: usize,
    pub customize: serde_json::Value,
    pub partitions: Vec<PartitionReport>,
    pub disk_size: u64,
    pub verity: serde_json::Value,
    pub cmdlines: BTreeMap<Slot, String>,
    pub sizes: BTreeMap<String, u64>,
    pub timings_seconds: BTreeMap<String, f64>,
    pub outputs: Vec<OutputFile>,
    /// K3s, its airgap archive and the pre-pulled images (null without [k3s]).
    pub k3s: Option<super::k3s::Installed>,
    /// What was signed for Secure Boot and with which certificate (null without [secure_boot]).
    pub secure_boot: Option<serde_json::Value>,
}

pub struct ReportInput<'a> {
    pub board: &'a Board,
    pub recipe: &'a Recipe,
    pub version: &'a str,
    pub build_id: &'a str,
    pub epoch: u64,
    pub inputs: Vec<InputFile>,
    pub spec: &'a RootfsSpec,
    pub layer: &'a BoardLayerSpec,
    pub rootfs_cached: bool,
    pub layer_cached: bool,
    pub table: &'a Table,
    pub root: &'a RootImage,
    pub kernel_version: &'a str,
    pub cmdlines: &'a BTreeMap<Slot, String>,
    pub payload: &'a Payload,
    pub debs: &'a [DebPackage],
    pub customize: &'a Summary,
    pub tree_bytes: u64,
    pub disk_mapped_bytes: u64,
    pub timings: BTreeMap<&'static str, f64>,
    pub staging: &'a Path,
    pub secure_boot: Option<serde_json::Value>,
}

fn tool_versions() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for t in super::required_tools() {
        if let Some(v) = crate::tools::package_version(t.package) {
            m.insert(t.package.to_string(), v);
        }
    }
    m
}

/// Every file under `dir` (recursively), sorted, with size and sha256.
fn list_outputs(dir: &Path) -> io::Result<Vec<OutputFile>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            Ok(OutputFile {
                name: p.strip_prefix(dir).unwrap_or(&p).display().to_string(),
                size: p.metadata()?.len(),
                sha256: sha256_file(&p)?,
            })
        })
        .collect()
}

impl Report {
    /// Build the report, write `report.json` and `SHA256SUMS` into the staging directory.
    pub fn new(i: ReportInput<'_>) -> io::Result<Self> {
        let outputs = list_outputs(i.staging)?;
        let size_of = |name: &str| outputs.iter().find(|o| o.name == name).map_or(0, |o| o.size);
        let mut sizes = BTreeMap::new();
        sizes.insert("rootfs_tree_bytes".into(), i.tree_bytes);
        sizes.insert("root_image_bytes".into(), i.root.image_bytes);
        if let Some(packed) = i.root.packed_bytes {
            // What the delta-friendly layout (block-aligned file data) costs in size.
            sizes.insert("root_image_packed_layout_bytes".into(), packed);
            sizes.insert("delta_friendly_layout_cost_bytes".into(), i.root.image_bytes.saturating_sub(packed));
        }
        sizes.insert("verity_bytes".into(), i.root.verity_bytes);
        sizes.insert("disk_image_bytes".into(), i.table.size_bytes);
        sizes.insert("disk_mapped_bytes".into(), i.disk_mapped_bytes);
        sizes.insert("disk_zst_bytes".into(), size_of("disk.img.zst"));
        sizes.insert("payload_bytes".into(), i.payload.artifacts.iter().map(|a| a.size).sum());
        let report = Report {
            edgeimg_version: env!("CARGO_PKG_VERSION").into(),
            build_id: i.build_id.into(),
            board: i.board.name.clone(),
            arch: i.board.arch.debian().into(),
            image: i.recipe.image.name.clone(),
            version: i.version.into(),
            source_date_epoch: i.epoch,
            inputs: i.inputs,
            debian: serde_json::json!({
                "suite": i.spec.suite,
                "mirror": i.spec.mirror,
                "components": i.layer.components,
                "release_sha256": i.spec.release_sha256,
                "rootfs_key": i.spec.key(),
                "rootfs_cached": i.rootfs_cached,
                "board_layer_key": i.layer.key(),
                "board_layer_cached": i.layer_cached,
                "requested_packages": i.spec.packages,
                "board_packages": i.layer.packages,
            }),
            tools: tool_versions(),
            kernel_version: i.kernel_version.into(),
            packages: i.debs.len(),
            customize: serde_json::to_value(i.customize).unwrap_or_default(),
            partitions: i
                .table
                .partitions
                .iter()
                .map(|p| PartitionReport {
                    label: p.label.clone(),
                    type_guid: p.type_guid.to_string(),
                    partuuid: p.guid.to_string(),
                    offset: p.offset(),
                    size: p.size(),
                })
                .collect(),
            disk_size: i.table.size_bytes,
            verity: serde_json::json!({
                "roothash": i.root.roothash,
                "salt": i.root.salt,
                "hash": "sha256",
                "data_block_size": 4096,
                "hash_block_size": 4096,
            }),
            cmdlines: i.cmdlines.clone(),
            sizes,
            timings_seconds: i.timings.into_iter().map(|(k, v)| (k.to_string(), (v * 10.0).round() / 10.0)).collect(),
            outputs,
            k3s: i.customize.k3s.clone(),
            secure_boot: i.secure_boot,
        };
        let mut sums = String::new();
        for o in &report.outputs {
            sums.push_str(&format!("{}  {}\n", o.sha256, o.name));
        }
        std::fs::write(i.staging.join("SHA256SUMS"), sums)?;
        let mut json = serde_json::to_vec_pretty(&report).map_err(io::Error::other)?;
        json.push(b'\n');
        std::fs::write(i.staging.join("report.json"), json)?;
        Ok(report)
    }

    pub fn summary(&self, dir: &Path) -> serde_json::Value {
        serde_json::json!({
            "dir": dir,
            "board": self.board,
            "image": self.image,
            "version": self.version,
            "build_id": self.build_id,
            "roothash": self.verity["roothash"],
            "sizes": self.sizes,
        })
    }
}

//! `edgeimg build`: board + recipe → A/B disk image, update payload, report and SBOM.
//!
//! Everything is written into `<out>/<board>/<image>/.<version>.partial-<pid>/` and renamed
//! to `<out>/<board>/<image>/<version>/` only when complete, so a failed build never
//! leaves outputs that look finished.

pub mod boot;
pub mod customize;
pub mod disk;
mod generic_initrd;
pub mod gitops;
pub mod helm;
pub mod k3s;
mod outputs;
pub mod report;
pub mod rootfs;
pub mod rootimg;
pub mod uki;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use edgeimg_proto::slot::{DATA_LABEL, ESP_LABEL};
use edgeimg_proto::Slot;

use crate::config::{self, ConfigError};
use crate::fsutil::sha256_file;
use crate::gpt::Guid;
use crate::progress::{Reporter, ReporterExt};
use crate::tools::{self, ToolError};
pub use report::Report;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub board: String,
    pub recipe: PathBuf,
    pub version: Option<String>,
    pub out: PathBuf,
    pub cache: PathBuf,
    pub boards_dir: Option<PathBuf>,
    pub source_date_epoch: Option<u64>,
    /// Rebuild the Debian base tree even if it is cached.
    pub no_cache: bool,
    /// Keep the staging directory of a failed build for inspection.
    pub keep_failed: bool,
    /// Registries reached over plain HTTP (loopback ones always are).
    pub insecure_registries: Vec<String>,
    /// The device updater binary for the board's architecture (default: `find_updater`).
    pub updater: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("edgeimg build needs root (mmdebstrap installs packages as root, file ownership must be kept); run it with sudo")]
    NotRoot,
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    NoEmulation(String),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error("customizing the root filesystem: {0}")]
    Customize(#[from] customize::CustomizeError),
    #[error(transparent)]
    RootImage(#[from] rootimg::RootImageError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    K3s(#[from] k3s::K3sError),
    #[error("the device updater for {arch} was not found ({looked}); build it with `{build}`, or pass --updater PATH")]
    NoUpdater { arch: String, looked: String, build: String },
    #[error("the recipe has [updater] tpm = true but edgeimg-tpm for {arch} was not found ({looked}); build it with `{build}`")]
    NoTpmTool { arch: String, looked: String, build: String },
}

/// The Rust target to cross-compile device binaries for `arch`; None when it is this host's.
fn cross_triple(arch: config::Arch) -> Option<&'static str> {
    match (arch, std::env::consts::ARCH) {
        (config::Arch::Amd64, "x86_64") | (config::Arch::Arm64, "aarch64") => None,
        (config::Arch::Amd64, _) => Some("x86_64-unknown-linux-gnu"),
        (config::Arch::Arm64, _) => Some("aarch64-unknown-linux-gnu"),
    }
}

/// A root filesystem for another architecture is assembled by running its package scripts
/// under QEMU user emulation: the kernel must hand that architecture's binaries to QEMU.
fn check_emulation(arch: config::Arch) -> Result<(), BuildError> {
    let Some(triple) = cross_triple(arch) else { return Ok(()) };
    let qemu = triple.split('-').next().unwrap_or_default();
    let entry = Path::new("/proc/sys/fs/binfmt_misc").join(format!("qemu-{qemu}"));
    match fs::read_to_string(&entry) {
        Ok(s) if s.starts_with("enabled") => Ok(()),
        Ok(_) => Err(BuildError::NoEmulation(format!("{} is disabled: enable it with `echo 1 > {}`", entry.display(), entry.display()))),
        Err(_) => Err(BuildError::NoEmulation(format!(
            "building a {} image on this {} host needs QEMU user emulation registered with the kernel, and {} is missing. \
             Install it with `apt-get install -t bookworm-backports qemu-user-static qemu-user-binfmt`; \
             without systemd, register it with `mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; \
             /lib/systemd/systemd-binfmt /usr/lib/binfmt.d/qemu-{qemu}.conf` (ci/setup does both)",
            arch.debian(),
            std::env::consts::ARCH,
            entry.display()
        ))),
    }
}

/// The `edgeimg-updater` binary to bake into images for `arch`: the explicit path, else
/// `$EDGEIMG_UPDATER_<ARCH>`, else cargo's output layout next to this executable.
pub fn find_updater(explicit: Option<&Path>, arch: config::Arch) -> Result<PathBuf, BuildError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let var = format!("EDGEIMG_UPDATER_{}", arch.debian().to_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)).unwrap_or_default();
    let target_dir = exe_dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let (candidate, build) = match cross_triple(arch) {
        None => {
            // The size-optimised device build if there is one, else the one beside us.
            let device = target_dir.join("device").join("edgeimg-updater");
            let c = if device.is_file() { device } else { exe_dir.join("edgeimg-updater") };
            (c, "cargo build --profile device -p edgeimg-updater".to_string())
        }
        Some(triple) => {
            let device = target_dir.join(triple).join("device").join("edgeimg-updater");
            let path =
                if device.is_file() { device } else { target_dir.join(triple).join("release").join("edgeimg-updater") };
            (path, format!("cargo build --profile device -p edgeimg-updater --target {triple}"))
        }
    };
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(BuildError::NoUpdater {
            arch: arch.debian().into(),
            looked: format!("{var} unset, no {}", candidate.display()),
            build,
        })
    }
}

/// The `edgeimg-tpm` binary for images with `[updater] tpm = true`:
/// `$EDGEIMG_TPM_TOOL_<ARCH>`, else the one beside the device updater.
pub fn find_tpm_tool(updater: &Path, arch: config::Arch) -> Result<PathBuf, BuildError> {
    let var = format!("EDGEIMG_TPM_TOOL_{}", arch.debian().to_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    let candidate = updater.with_file_name("edgeimg-tpm");
    if candidate.is_file() {
        return Ok(candidate);
    }
    let target = cross_triple(arch).map(|t| format!(" --target {t}")).unwrap_or_default();
    Err(BuildError::NoTpmTool {
        arch: arch.debian().into(),
        looked: format!("{var} unset, no {}", candidate.display()),
        build: format!("cargo build --profile device -p edgeimg-tpm{target}"),
    })
}

pub(crate) fn io_ctx(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// Host tools a build needs for a board.
pub fn required_tools() -> Vec<tools::Tool> {
    use tools::*;
    vec![MMDEBSTRAP, MKFS_EROFS, VERITYSETUP, MKFS_VFAT, MCOPY, MMD, MKFS_EXT4, DPKG_QUERY, SYSTEMCTL]
}

pub struct Built {
    pub dir: PathBuf,
    pub report: Report,
}

/// Run a whole build. On error the partial output directory is removed.
pub fn build(opts: &BuildOptions, rep: &dyn Reporter) -> Result<Built, BuildError> {
    let t = rep.start("check", "reading board and recipe, checking host tools");
    let (board, board_src) = config::load_board(&opts.board, opts.boards_dir.as_deref())?;
    let recipe = config::load_recipe(&opts.recipe)?;
    let version = match &opts.version {
        Some(v) => {
            config::recipe::validate_version(v).map_err(|m| ConfigError {
                file: "--version".into(),
                line: None,
                key: None,
                message: m,
            })?;
            v.clone()
        }
        None => recipe.recipe.image.version.clone(),
    };
    tools::require(&required_tools())?;
    if let Some((i, s)) = board.apt.sources.iter().enumerate().find(|(_, s)| s.missing_host_key().is_some()) {
        return Err(BuildError::Unsupported(format!(
            "board {}: apt.sources[{i}].key is {}, which this machine does not have. The board installs \
             packages from {} {}, signed by that key: install the vendor's keyring package or download the key to \
             that path, and check its fingerprint against the one the vendor publishes",
            board.name, s.key, s.url, s.suite
        )));
    }
    if recipe.recipe.secure_boot.is_some() {
        if board.boot.backend != config::BootBackend::SystemdBoot {
            return Err(BuildError::Unsupported(format!(
                "the recipe has [secure_boot], which needs a UEFI board (boot.backend = \"systemd-boot\"); \
                 board {} boots with {}: remove [secure_boot] for it or build for another board",
                board.name,
                board.boot.backend.name()
            )));
        }
        tools::require(&[tools::SBSIGN])?;
    }
    if board.boot.backend == config::BootBackend::UBoot {
        tools::require(&[tools::MKIMAGE])?;
    }
    check_emulation(board.arch)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(BuildError::NotRoot);
    }
    let updater = find_updater(opts.updater.as_deref(), board.arch)?;
    let tpm_tool = if recipe.recipe.updater.tpm { Some(find_tpm_tool(&updater, board.arch)?) } else { None };
    // Unpinned images are a recipe problem: say so before any slow work.
    if let Some(k) = &recipe.recipe.k3s {
        let refs: Vec<crate::oci::ImageRef> = k3s::all_images(k, &recipe)
            .iter()
            .map(|r| crate::oci::ImageRef::parse(r).expect("validated with the recipe"))
            .collect();
        let lock = crate::oci::lock::LockFile::load(&crate::oci::lock::path_for(&recipe.source.path))
            .map_err(k3s::K3sError::from)?;
        crate::oci::lock::LockFile::pin(lock.as_ref(), &refs, &recipe.source.path).map_err(k3s::K3sError::from)?;
    }
    rep.finish(
        "check",
        t,
        format!("board {} ({}), recipe {}", board.name, board.arch.debian(), recipe.recipe.image.name),
    );

    let final_dir = opts.out.join(&board.name).join(&recipe.recipe.image.name).join(&version);
    let parent = final_dir.parent().unwrap_or(&opts.out).to_path_buf();
    fs::create_dir_all(&parent).map_err(io_ctx(format!("creating {}", parent.display())))?;
    let staging = parent.join(format!(".{version}.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(io_ctx(format!("creating {}", staging.display())))?;

    let ctx = Ctx {
        opts,
        board: &board,
        board_src: &board_src,
        recipe: &recipe,
        version: &version,
        staging: &staging,
        updater: &updater,
        tpm_tool: tpm_tool.as_deref(),
        rep,
    };
    match ctx.run() {
        Ok(report) => {
            outputs::publish_dir(&staging, &final_dir)
                .map_err(io_ctx(format!("moving the build into {}", final_dir.display())))?;
            rep.event(crate::progress::Event::Done { summary: report.summary(&final_dir) });
            Ok(Built { dir: final_dir, report })
        }
        Err(e) => {
            if opts.keep_failed {
                rep.warn(format!("kept the failed build's files in {}", staging.display()));
            } else {
                let _ = fs::remove_dir_all(&staging);
            }
            rep.event(crate::progress::Event::Failed { error: e.to_string() });
            Err(e)
        }
    }
}

struct Ctx<'a> {
    opts: &'a BuildOptions,
    board: &'a config::Board,
    board_src: &'a config::Source,
    recipe: &'a config::LoadedRecipe,
    version: &'a str,
    staging: &'a Path,
    updater: &'a Path,
    tpm_tool: Option<&'a Path>,
    rep: &'a dyn Reporter,
}

impl Ctx<'_> {
    fn run(&self) -> Result<Report, BuildError> {
        let (board, recipe, rep) = (self.board, &self.recipe.recipe, self.rep);
        let mut timings = BTreeMap::new();
        let board_file = self.board_src.path.display().to_string();

        let t = rep.start("mirror", format!("checking {} {}", recipe.debian.mirror, recipe.debian.suite));
        let (release_sha256, release_date) = rootfs::probe_mirror(&recipe.debian.mirror, &recipe.debian.suite)?;
        // Same inputs, same bytes: the timestamp comes from the environment, else from the
        // archive state the packages come from.
        let epoch = self.opts.source_date_epoch.or(release_date).unwrap_or(0);
        timings.insert(
            "mirror",
            rep.finish("mirror", t, format!("Release {}…, SOURCE_DATE_EPOCH={epoch}", &release_sha256[..12])),
        );

        let spec = rootfs::spec(board, self.recipe, release_sha256, epoch);
        let t =
            rep.start("rootfs", format!("Debian {} {} with {} packages", spec.suite, spec.arch, spec.packages.len()));
        let base_tree = rootfs::ensure(&self.opts.cache, &spec, self.opts.no_cache, rep)?;
        let base_cached = base_tree.cached;
        timings.insert("rootfs", rep.finish("rootfs", t, if base_cached { "cached" } else { "built" }));

        let layer = rootfs::board_layer_spec(board, &spec);
        let t = rep.start(
            "board-layer",
            match layer.packages.len() {
                0 => format!("{}: the initrd", board.name),
                n => format!("{}: {n} firmware packages and the initrd", board.name),
            },
        );
        let layer_tree =
            rootfs::ensure_board_layer(&self.opts.cache, &base_tree.path, &spec, &layer, self.opts.no_cache, rep)?;
        // Let other boards' builds at the base tree now; the layer stays locked to the end.
        drop(base_tree);
        let base = &layer_tree.path;
        let how = match (layer_tree.cached, layer_tree.note.as_str()) {
            (true, _) => "cached".to_string(),
            (false, "") => "built".to_string(),
            (false, note) => format!("built, with {note}"),
        };
        timings.insert("board-layer", rep.finish("board-layer", t, how));

        let inputs = report::inputs(self.board_src, self.recipe).map_err(io_ctx("hashing the build inputs"))?;
        let build_id = report::build_id(&layer.key(), self.version, epoch, &inputs);

        let work = self.staging.join("work");
        let tree = work.join("rootfs");
        let arch = board.arch.debian();
        let k3s_fetched = match &recipe.k3s {
            Some(k) => {
                let t = rep.start("k3s", format!("K3s {} and {} images for {arch}", k.version, k.images.len()));
                let env = k3s::FetchEnv {
                    cache: &self.opts.cache,
                    insecure: &self.opts.insecure_registries,
                    work: &work,
                    epoch,
                    rep,
                };
                let f = k3s::fetch(k, self.recipe, arch, &env)?;
                let images = f
                    .images
                    .as_ref()
                    .map(|(_, i)| format!(", images archive {} MiB", i.size >> 20))
                    .unwrap_or_default();
                timings.insert("k3s", rep.finish("k3s", t, format!("binary {}…{images}", &f.binary_sha256[..12])));
                Some(f)
            }
            None => None,
        };
        let t = rep.start("customize", "copying the base tree and making it a read-only root");
        fs::create_dir_all(&work).map_err(io_ctx("creating the work directory"))?;
        crate::fsutil::copy_tree(base, &tree)?;
        let kernel = boot::take_kernel(&tree, &work.join("boot"))?;
        let summary = customize::customize(
            &tree,
            &customize::Input {
                board,
                recipe: self.recipe,
                version: self.version,
                build_id: &build_id,
                epoch,
                updater: self.updater,
                tpm_tool: self.tpm_tool,
                k3s: k3s_fetched.as_ref(),
            },
        )?;
        let debs = crate::sbom::deb_packages(&crate::fsutil::in_root(
            &tree,
            &format!("{}/lib/dpkg", customize::system::FACTORY_VAR),
        ))?;
        let tree_bytes = crate::fsutil::tree_size(&tree).map_err(io_ctx("measuring the root tree"))?;
        // A unified kernel image names the OS it boots (its .osrel section).
        let os_release = fs::read(crate::fsutil::in_root(&tree, "/usr/lib/os-release"))
            .map_err(io_ctx("reading the image's /usr/lib/os-release"))?;
        timings.insert(
            "customize",
            rep.finish("customize", t, format!("{} packages, kernel {}", debs.len(), kernel.version)),
        );

        let t = rep.start("root-image", format!("EROFS ({:?}) + dm-verity", recipe.rootfs.compression));
        let root = rootimg::make(
            &tree,
            &work,
            &rootimg::Options {
                compression: recipe.rootfs.compression,
                delta_friendly: recipe.rootfs.delta_friendly,
                epoch,
                uuid: Guid::derive("edgeimg-rootfs", &build_id),
                root_slot_mib: board.disk.root_mib,
                verity_slot_mib: board.disk.verity_mib,
                board_file: &board_file,
                salt_seed: &format!("{}:{}", recipe.image.name, board.name),
            },
            |l| rep.output("root-image", l),
        )?;
        fs::remove_dir_all(&tree).map_err(io_ctx("removing the work tree"))?;
        timings.insert(
            "root-image",
            rep.finish(
                "root-image",
                t,
                format!(
                    "{} MiB{}, root hash {}…",
                    root.image_bytes >> 20,
                    root.packed_bytes.map_or(String::new(), |p| format!(
                        " (delta-friendly layout: +{:.1}% over the packed one)",
                        root.image_bytes.saturating_sub(p) as f64 * 100.0 / p.max(1) as f64
                    )),
                    &root.roothash[..16]
                ),
            ),
        );

        let t = rep.start("disk", "ESP, data partition, GPT");
        let title = format!("{} {}", recipe.image.name, self.version);
        let cmdlines: BTreeMap<Slot, String> =
            Slot::ALL.iter().map(|&s| (s, boot::cmdline(board, s, &root.roothash))).collect();
        let secure_boot = recipe.secure_boot.as_ref().map(|sb| (sb, self.recipe.dir.as_path()));
        let boot_set = match board.boot.backend {
            b if b.boot_partition_per_slot() => boot::slot_partitions(
                &work,
                &boot::SlotBootInput {
                    board,
                    board_file: &board_file,
                    tree: base,
                    kernel: &kernel,
                    cmdlines: &cmdlines,
                    title: &title,
                    epoch,
                },
            )?,
            _ => boot::boot_set(&work, base, board, &kernel, &cmdlines, &os_release, secure_boot)?,
        };
        let esp = boot::esp_image(
            &work,
            &boot::EspInput {
                board,
                board_file: &board_file,
                tree: base,
                boot: &boot_set,
                title: &title,
                cmdline_a: &cmdlines[&Slot::A],
                epoch,
                secure_boot,
            },
        )?;
        let data = disk::data_image(&work, board, epoch)?;
        let table = disk::layout(board);
        let disk_img = self.staging.join("disk.img");
        let (root_a, verity_a) = (Slot::A.root_label(), Slot::A.verity_label());
        let mut contents: Vec<(&str, &Path)> =
            vec![(ESP_LABEL, &esp), (&root_a, &root.image), (&verity_a, &root.verity), (DATA_LABEL, &data)];
        // Tryboot, L4T: slot A's own boot partition (slot B's stays empty until an update).
        let boot_a = board.boot.backend.slot_boot_label(Slot::A);
        if let Some(label) = &boot_a {
            let name = &boot_set.slots[&Slot::A][0].0;
            let (_, img) = boot_set.artifacts.iter().find(|(n, _)| n == name).expect("slot_partitions made it");
            contents.push((label, img));
        }
        disk::assemble(&disk_img, &table, &contents)?;
        timings.insert(
            "disk",
            rep.finish("disk", t, format!("{} MiB, {} partitions", table.size_bytes >> 20, table.partitions.len())),
        );

        let payload =
            outputs::payload(self.staging, board, recipe, self.version, &build_id, &root, &boot_set, &cmdlines)
                .map_err(io_ctx("writing the update payload"))?;

        let t = rep.start("compress", "disk.img.zst and disk.img.bmap");
        let bmap =
            outputs::bmap_and_zstd(self.staging, &disk_img, rep).map_err(io_ctx("compressing the disk image"))?;
        timings.insert("compress", rep.finish("compress", t, format!("{} MiB mapped", bmap.mapped_bytes() >> 20)));

        let sbom = crate::sbom::spdx(
            &crate::sbom::Document {
                image: &recipe.image.name,
                version: self.version,
                board: &board.name,
                build_id: &build_id,
                suite: &recipe.debian.suite,
                created_epoch: epoch,
            },
            &debs,
            &match (&recipe.k3s, &summary.k3s) {
                (Some(k), Some(i)) => k3s::sbom_components(k, arch, i),
                _ => Vec::new(),
            },
        );
        fs::write(self.staging.join("sbom.spdx.json"), serde_json::to_vec_pretty(&sbom).unwrap_or_default())
            .map_err(io_ctx("writing the SBOM"))?;
        fs::remove_dir_all(&work).map_err(io_ctx("removing the work directory"))?;

        let report = Report::new(report::ReportInput {
            board,
            recipe,
            version: self.version,
            build_id: &build_id,
            epoch,
            inputs,
            spec: &spec,
            layer: &layer,
            rootfs_cached: base_cached,
            layer_cached: layer_tree.cached,
            table: &table,
            root: &root,
            kernel_version: &kernel.version,
            cmdlines: &cmdlines,
            payload: &payload,
            debs: &debs,
            customize: &summary,
            tree_bytes,
            disk_mapped_bytes: bmap.mapped_bytes(),
            timings,
            staging: self.staging,
            secure_boot: recipe.secure_boot.as_ref().map(|sb| {
                let mut signed = boot::loader_paths(board.arch).to_vec();
                signed.extend(boot_set.slots.values().flatten().map(|(_, path)| path.clone()));
                serde_json::json!({
                    "cert": self.recipe.dir.join(&sb.cert).display().to_string(),
                    "signed": signed,
                    "unified_kernel_images": boot_set.uki,
                })
            }),
        })
        .map_err(io_ctx("writing the build report"))?;
        Ok(report)
    }
}

/// Hash helper used by report and payload code.
pub(crate) fn file_digest(path: &Path) -> std::io::Result<(u64, String)> {
    Ok((path.metadata()?.len(), sha256_file(path)?))
}

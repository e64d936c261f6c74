//! One flash job: everything checked before the target is touched (`Plan::prepare`), then
//! write -> read back and verify -> provision -> partition table last (`Plan::execute`).
//! Any failure after the first write wipes the first MiB again and reports the offset.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use edgeimg_proto::slot::ESP_LABEL;

use super::device::{self, DeviceFacts, Index, World};
use super::error::FlashError;
use super::events::{size, FlashEvent, Meter, Phase, Sink};
use super::provision::{self, ProvisionFile};
use super::safety;
use super::source::{BmapChoice, Image};
use super::target::{FileTarget, Target};
use super::verify;
use super::writer::{self, Stop, HOLD};

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub image: PathBuf,
    pub bmap: BmapChoice,
    pub target: PathBuf,
    pub force: bool,
    pub provision: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum TargetKind {
    /// A regular file (image-to-image copies, tests); `size` is None if it does not exist yet.
    File {
        size: Option<u64>,
    },
    Block(Box<DeviceFacts>),
}

#[derive(Debug, Clone)]
pub struct TargetInfo {
    /// As given on the command line (e.g. /dev/disk/by-id/usb-...).
    pub given: PathBuf,
    /// With symlinks resolved (e.g. /dev/sdb).
    pub path: PathBuf,
    pub kind: TargetKind,
}

impl TargetInfo {
    /// Resolve the target path and learn what it is; block devices are probed in sysfs.
    pub fn inspect(given: &Path, world: &World) -> Result<Self, FlashError> {
        let kind_err = |message: &str| FlashError::TargetKind { path: given.into(), message: message.into() };
        let path = match fs::canonicalize(given) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = given.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let name = given.file_name().ok_or_else(|| kind_err("not a file name"))?;
                fs::canonicalize(parent).map_err(|_| kind_err("does not exist, nor does its directory"))?.join(name)
            }
            Err(e) => return Err(FlashError::Open { path: given.into(), source: e }),
        };
        let kind = match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if path.starts_with("/dev") {
                    return Err(kind_err("no such device (is the card inserted?)"));
                }
                TargetKind::File { size: None }
            }
            Err(e) => return Err(FlashError::Open { path: path.clone(), source: e }),
            Ok(m) if m.is_file() => TargetKind::File { size: Some(m.len()) },
            Ok(m) if m.file_type().is_block_device() => {
                let rdev = m.rdev();
                let devnum = format!("{}:{}", nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
                let idx = Index::read(world);
                let name = idx.by_devnum(&devnum).ok_or_else(|| FlashError::NoSuchDevice {
                    name: format!("{} ({devnum})", path.display()),
                    sysfs: world.sys.clone(),
                })?;
                TargetKind::Block(Box::new(device::probe(world, name)?))
            }
            Ok(_) => return Err(kind_err("is neither a block device nor a regular file")),
        };
        Ok(TargetInfo { given: given.into(), path, kind })
    }

    pub fn is_device(&self) -> bool {
        matches!(self.kind, TargetKind::Block(_))
    }
}

/// A job that passed every check and may be confirmed and executed.
#[derive(Debug)]
pub struct Plan {
    pub image: Image,
    pub target: TargetInfo,
    pub provision: Option<ProvisionFile>,
    /// Offset and size of the image's boot partition (only with provisioning).
    pub esp: Option<(u64, u64)>,
    /// Things the user should know before saying yes.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub image_size: u64,
    pub bytes_written: u64,
    pub bytes_verified: u64,
    pub seconds: f64,
    pub provisioned: bool,
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

impl Plan {
    /// Everything that can be checked without touching the target, in this order: the
    /// provisioning file, the image and its block map, the safety rules.
    pub fn prepare(req: &Request, target: TargetInfo) -> Result<Plan, FlashError> {
        let provision = req.provision.as_deref().map(provision::load).transpose()?;
        let image = Image::open(&req.image, &req.bmap)?;
        if same_file(&req.image, &target.path) || image.bmap_path.as_deref().is_some_and(|b| same_file(b, &target.path))
        {
            return Err(FlashError::TargetIsImage { path: target.path.clone() });
        }
        if let TargetKind::Block(f) = &target.kind {
            let refusals = safety::check(f, image.size, req.force);
            if !refusals.is_empty() {
                return Err(FlashError::Refused(refusals));
            }
        }
        let mut warnings = Vec::new();
        if image.bmap.is_none() {
            let all = image.size.map(|s| format!("all {} of it", size(s))).unwrap_or_else(|| "all of it".into());
            warnings.push(match req.bmap {
                BmapChoice::Ignore => format!("--no-bmap: writing every byte of the image ({all}): this is slower"),
                _ => format!(
                    "no block map ({}): writing every byte of the image ({all}), which is slower; \
                     make one with `bmaptool create`",
                    super::source::default_bmap_path(&req.image).display()
                ),
            });
        }
        if image.size.is_none() && target.is_device() {
            warnings.push(
                "the image's size is not known before decompressing: a card that is too small is only found while writing"
                    .into(),
            );
        }
        let esp = match &provision {
            None => None,
            Some(_) => {
                let head = image.read_range(0, HOLD as usize)?;
                let esp = provision::esp_of(&head)
                    .ok_or_else(|| FlashError::NoEsp { path: req.image.clone(), label: ESP_LABEL })?;
                if esp.0 < HOLD {
                    return Err(FlashError::Fat(format!(
                        "the image's `{ESP_LABEL}` partition starts at byte {}, inside the first MiB that is \
                         written last: provisioning needs it at 1 MiB or later",
                        esp.0
                    )));
                }
                let bs = image.read_range(esp.0, 512)?;
                let fat =
                    bs.len() == 512 && bs[510..] == [0x55, 0xAA] && (&bs[54..57] == b"FAT" || &bs[82..85] == b"FAT");
                if !fat {
                    return Err(FlashError::Fat(format!(
                        "the image's `{ESP_LABEL}` partition (byte offset {}) holds no FAT filesystem",
                        esp.0
                    )));
                }
                Some(esp)
            }
        };
        Ok(Plan { image, target, provision, esp, warnings })
    }

    /// Ask before overwriting a device, or a file that has data in it.
    pub fn needs_confirmation(&self) -> bool {
        match &self.target.kind {
            TargetKind::Block(_) => true,
            TargetKind::File { size } => size.unwrap_or(0) > 0,
        }
    }

    /// What is about to be overwritten: model, size, what is on it now.
    pub fn describe(&self) -> String {
        let t = &self.target;
        let mut s = format!("About to overwrite {}", t.path.display());
        if t.given != t.path {
            s.push_str(&format!(" ({})", t.given.display()));
        }
        s.push_str(":\n");
        match &t.kind {
            TargetKind::Block(f) => {
                s.push_str(&format!("  model      {}\n", f.label()));
                s.push_str(&format!("  size       {} ({} bytes)\n", size(f.size), f.size));
                if !f.partitions.is_empty() {
                    let p: Vec<String> = f.partitions.iter().map(|p| format!("{} {}", p.name, size(p.size))).collect();
                    s.push_str(&format!("  partitions {}\n", p.join(", ")));
                }
            }
            TargetKind::File { size: sz } => {
                s.push_str(&format!("  file       {}\n", sz.map(size).unwrap_or_else(|| "new".into())));
            }
        }
        s.push_str(&format!("  contents   {}\n", safety::contents(&t.path)));
        let what = match (&self.image.bmap, self.image.size) {
            (Some(b), _) => format!("{} image, {} mapped", size(b.image_size), size(b.mapped_bytes())),
            (None, Some(n)) => format!("{} image, all of it", size(n)),
            (None, None) => "image of unknown size".into(),
        };
        s.push_str(&format!("with {} ({what}).\n", self.image.path.display()));
        if let Some(p) = &self.provision {
            s.push_str(&format!("Provisioning: {}\n", p.summary));
        }
        s.push_str("Everything on it will be lost.");
        s
    }

    /// Open the target for writing (block devices exclusively, with direct I/O).
    pub fn open_target(&self) -> Result<FileTarget, FlashError> {
        let path = &self.target.path;
        let r = match &self.target.kind {
            TargetKind::File { .. } => FileTarget::open_file(path),
            TargetKind::Block(f) => FileTarget::open_device(path, f.size, true),
        };
        r.map_err(|source| match source.raw_os_error() {
            Some(code) if code == nix::errno::Errno::EBUSY as i32 => FlashError::TargetKind {
                path: path.clone(),
                message: "is busy: something holds it open (a mount, device-mapper, RAID): close it first".into(),
            },
            _ => FlashError::Open { path: path.clone(), source },
        })
    }

    fn fail(&self, target: &mut dyn Target, (stopped_at, e): Stop) -> FlashError {
        let wipe = writer::wipe_head(target, self.image.size).err().map(|e| e.to_string());
        FlashError::Partial { stopped_at, device: self.target.is_device(), wipe, source: Box::new(e) }
    }

    /// Write, read back and verify, provision, then write the partition table.
    pub fn execute(&self, target: &mut dyn Target, sink: &dyn Sink) -> Result<Summary, FlashError> {
        let started = Instant::now();
        let stream = self.image.stream()?;
        let write_bytes = self.image.bmap.as_ref().map(|b| b.mapped_bytes()).or(self.image.size);
        sink.event(FlashEvent::Start {
            image: self.image.path.display().to_string(),
            target: self.target.path.display().to_string(),
            image_bytes: self.image.size,
            write_bytes,
            bmap: self.image.bmap_path.as_ref().map(|p| p.display().to_string()),
        });
        let written = writer::write(&self.image, stream, target, sink).map_err(|s| self.fail(target, s))?;
        let verified = verify::verify(&self.image, &written, target, sink).map_err(|s| self.fail(target, s))?;
        if let (Some(p), Some(esp)) = (&self.provision, self.esp) {
            let m = Meter::start(sink, Phase::Provision, None);
            provision::install(target, esp, p).map_err(|e| self.fail(target, (esp.0, e)))?;
            m.finish();
        }
        writer::finalize(&written.head, target, sink).map_err(|s| self.fail(target, s))?;
        let summary = Summary {
            image_size: written.image_size,
            bytes_written: written.bytes_written,
            bytes_verified: verified,
            seconds: started.elapsed().as_secs_f64(),
            provisioned: self.provision.is_some(),
        };
        sink.event(FlashEvent::Done {
            target: self.target.path.display().to_string(),
            image_bytes: summary.image_size,
            bytes_written: summary.bytes_written,
            bytes_verified: summary.bytes_verified,
            seconds: summary.seconds,
            provisioned: summary.provisioned,
        });
        Ok(summary)
    }
}

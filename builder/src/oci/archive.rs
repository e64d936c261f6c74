//! OCI image-layout archives (tar) that K3s imports from its `agent/images` directory.
//!
//! All of a recipe's images go into one archive, so a layer shared by several images is
//! stored once. Each image appears in `index.json` under its full name (and, when it has a
//! tag, also as `name@digest`), annotated the way containerd's importer reads names. The
//! tar is deterministic: sorted entries, fixed owner, mode and time.
//!
//! Every blob's data starts on a 4 KiB boundary of the archive (`.pad/N` entries in
//! between, which importers ignore): when one image changes, the blobs that did not keep
//! their 4 KiB blocks, only at other offsets. A block-level delta copies them where the
//! archive's blocks reach the root image as they are (`compression = "none"`); EROFS lz4
//! cuts compressed clusters at other places, so with compression it does not help yet.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::pull::{open_blob, PulledImage};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ArchiveInfo {
    pub file_name: String,
    pub size: u64,
    pub sha256: String,
    pub images: Vec<ArchivedImage>,
    /// Bytes of blobs stored once although several images use them.
    pub shared_bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ArchivedImage {
    pub reference: String,
    pub names: Vec<String>,
    pub digest: String,
    pub media_type: String,
    /// Bytes of this image's blobs (manifests, config, layers) for the board's platform.
    pub size: u64,
}

fn header(path: &str, size: u64, epoch: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).expect("archive paths are short ASCII");
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(epoch);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    h
}

/// Names an image is imported under.
pub fn names(img: &PulledImage) -> Vec<String> {
    let r = &img.reference;
    let mut v = Vec::new();
    if let Some(t) = &r.tag {
        v.push(format!("{}:{t}", r.name()));
    }
    v.push(format!("{}@{}", r.name(), img.top.digest));
    v
}

/// Write `dir/edgeimg-images-<hash>.tar`; the name changes whenever the content does
/// (K3s's import cache is keyed by path, size and mtime, and mtimes are fixed).
pub fn write(dir: &Path, images: &[PulledImage], blobs_root: &Path, epoch: u64) -> io::Result<ArchiveInfo> {
    let mut manifests = Vec::new();
    let mut archived = Vec::new();
    let mut blobs: BTreeMap<String, u64> = BTreeMap::new();
    let mut shared_bytes = 0;
    for img in images {
        let names = names(img);
        for n in &names {
            manifests.push(json!({
                "mediaType": img.top.media_type,
                "digest": img.top.digest,
                "size": img.top.size,
                "annotations": {
                    "io.containerd.image.name": n,
                    "org.opencontainers.image.ref.name": n,
                },
            }));
        }
        for b in &img.blobs {
            if blobs.insert(b.digest.clone(), b.size).is_some() {
                shared_bytes += b.size;
            }
        }
        archived.push(ArchivedImage {
            reference: img.reference.to_string(),
            names,
            digest: img.top.digest.clone(),
            media_type: img.top.media_type.clone(),
            size: img.size(),
        });
    }
    let index = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .map_err(io::Error::other)?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;

    // The name is a hash of index.json plus the blob list: equal content, equal name.
    let mut id = Sha256::new();
    id.update(&index);
    for (d, s) in &blobs {
        id.update(format!("{d} {s}\n").as_bytes());
    }
    let file_name = format!("edgeimg-images-{}.tar", &hex::encode(id.finalize())[..16]);
    let path = dir.join(&file_name);
    let tmp = dir.join(format!(".{file_name}.tmp"));

    let out =
        HashingWriter { inner: BufWriter::with_capacity(1 << 20, File::create(&tmp)?), hash: Sha256::new(), n: 0 };
    let mut tar = tar::Builder::new(out);
    tar.append(&header("oci-layout", layout.len() as u64, epoch), &layout[..])?;
    tar.append(&header("index.json", index.len() as u64, epoch), &index[..])?;
    for (i, (digest, size)) in blobs.iter().enumerate() {
        // Pad so that this blob's data (after its 512-byte header) starts on 4 KiB.
        let pad = (4096 - (tar.get_ref().n + 512) % 4096) % 4096;
        if pad > 0 {
            let zeros = vec![0u8; (pad - 512) as usize];
            tar.append(&header(&format!(".pad/{i}"), zeros.len() as u64, epoch), &zeros[..])?;
        }
        let hexd = digest.trim_start_matches("sha256:");
        let f = open_blob(blobs_root, digest)?;
        if f.metadata()?.len() != *size {
            return Err(io::Error::other(format!("cached blob {digest} has the wrong size; remove it from the cache")));
        }
        tar.append(&header(&format!("blobs/sha256/{hexd}"), *size, epoch), f)?;
    }
    let mut out = tar.into_inner()?;
    out.flush()?;
    let size = out.n;
    let sha256 = hex::encode(out.hash.finalize());
    out.inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(ArchiveInfo { file_name, size, sha256, images: archived, shared_bytes })
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::pull::Descriptor;
    use crate::oci::ImageRef;

    fn blob(dir: &Path, content: &[u8]) -> Descriptor {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(content)));
        std::fs::write(dir.join(digest.trim_start_matches("sha256:")), content).unwrap();
        Descriptor { media_type: "x".into(), digest, size: content.len() as u64 }
    }

    #[test]
    fn shared_blobs_once_names_and_determinism() {
        let d = tempfile::tempdir().unwrap();
        let shared = blob(d.path(), b"shared layer");
        let m1 = blob(d.path(), b"manifest one");
        let m2 = blob(d.path(), b"manifest two");
        let img = |m: &Descriptor, r: &str| PulledImage {
            reference: ImageRef::parse(&format!("{r}@{}", m.digest)).unwrap(),
            top: m.clone(),
            blobs: vec![m.clone(), shared.clone()],
        };
        let imgs = vec![img(&m1, "127.0.0.1:5000/a:1"), img(&m2, "127.0.0.1:5000/b:2")];
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let a = write(&out, &imgs, d.path(), 1000).unwrap();
        assert_eq!(a.shared_bytes, b"shared layer".len() as u64);
        assert_eq!(
            a.images[0].names,
            vec!["127.0.0.1:5000/a:1".to_string(), format!("127.0.0.1:5000/a@{}", m1.digest)]
        );
        let mut ar = tar::Archive::new(File::open(out.join(&a.file_name)).unwrap());
        let mut paths = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let p = e.path().unwrap().display().to_string();
            if p.starts_with("blobs/") {
                assert_eq!(e.raw_file_position() % 4096, 0, "{p} is not on a 4 KiB boundary");
            }
            if !p.starts_with(".pad/") {
                paths.push(p);
            }
        }
        assert_eq!(paths.len(), 2 + 3, "oci-layout, index.json and three distinct blobs: {paths:?}");
        let b = write(&out, &imgs, d.path(), 1000).unwrap();
        assert_eq!((a.file_name, a.sha256), (b.file_name, b.sha256));
    }
}

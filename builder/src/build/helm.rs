//! Helm charts in the image: each `[[helm]]` chart archive is downloaded once (pinned by
//! sha256, cached), checked (its Chart.yaml names the pinned version; every image its values
//! name is in the pull list) and written into the runtime's manifests as a K3s `HelmChart`
//! carrying the chart itself (`chartContent`), so K3s's helm-controller installs it with no
//! network: the chart from the manifest, its images from the pre-pulled archive.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use yaml_rust2::{Yaml, YamlLoader};

use crate::config::helm::Helm;
use crate::oci::ImageRef;

#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    #[error("chart {name}: {archive} is not a gzip'd tar with a Chart.yaml ({reason})")]
    NotAChart { name: String, archive: String, reason: String },
    #[error("chart {name}: the archive is version {found} of chart `{chart}`, but the recipe pins {pinned}")]
    Version { name: String, chart: String, found: String, pinned: String },
    #[error("chart {name} runs image {image} (values: {path}) but helm[{index}].images does not list it: add it, pinned by digest, so the device has it offline")]
    MissingImage { name: String, index: usize, image: String, path: String },
    #[error("chart {name}: values are not valid YAML: {reason}")]
    Values { name: String, reason: String },
}

/// What a chart archive says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartInfo {
    pub name: String,
    pub version: String,
    pub app_version: Option<String>,
    pub values: String,
}

/// Read Chart.yaml and values.yaml of a chart archive (`<chart>/Chart.yaml` at the top).
pub fn inspect(name: &str, archive: &Path) -> Result<ChartInfo, HelmError> {
    let bad =
        |reason: String| HelmError::NotAChart { name: name.into(), archive: archive.display().to_string(), reason };
    let f = std::fs::File::open(archive).map_err(|e| bad(e.to_string()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let (mut chart_yaml, mut values) = (None, String::new());
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.to_string_lossy().into_owned();
        let parts: Vec<&str> = path.trim_start_matches("./").split('/').collect();
        if parts.len() != 2 || !["Chart.yaml", "values.yaml"].contains(&parts[1]) {
            continue;
        }
        let mut text = String::new();
        entry.read_to_string(&mut text).map_err(|e| bad(format!("{path}: {e}")))?;
        if parts[1] == "Chart.yaml" {
            chart_yaml = Some(text);
        } else {
            values = text;
        }
    }
    let text = chart_yaml.ok_or_else(|| bad("no <chart>/Chart.yaml".into()))?;
    let doc = YamlLoader::load_from_str(&text).map_err(|e| bad(format!("Chart.yaml: {e}")))?;
    let d = doc.first().ok_or_else(|| bad("Chart.yaml is empty".into()))?;
    let field = |k: &str| match &d[k] {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        _ => None,
    };
    Ok(ChartInfo {
        name: field("name").ok_or_else(|| bad("Chart.yaml has no name".into()))?,
        version: field("version").ok_or_else(|| bad("Chart.yaml has no version".into()))?,
        app_version: field("appVersion"),
        values,
    })
}

/// `over` merged into `base` (maps recursively; anything else replaced), like Helm does
/// with user values over the chart's.
fn merge(base: &mut Yaml, over: &Yaml) {
    match (base, over) {
        (Yaml::Hash(b), Yaml::Hash(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn load(name: &str, text: &str) -> Result<Yaml, HelmError> {
    let docs =
        YamlLoader::load_from_str(text).map_err(|e| HelmError::Values { name: name.into(), reason: e.to_string() })?;
    Ok(docs.into_iter().next().unwrap_or(Yaml::Hash(Default::default())))
}

/// Images the effective values name, with where: maps with `repository` (plus `registry`
/// and `tag`, the tag defaulting to the chart's appVersion, as most charts do), and string
/// values of keys called `image`.
pub fn images_in_values(chart: &ChartInfo, name: &str, user_values: &str) -> Result<Vec<(String, String)>, HelmError> {
    let mut v = load(name, &chart.values)?;
    merge(&mut v, &load(name, user_values)?);
    let mut out = Vec::new();
    walk(&v, "", chart.app_version.as_deref(), &mut out);
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(v: &Yaml, path: &str, app_version: Option<&str>, out: &mut Vec<(String, String)>) {
    let Yaml::Hash(h) = v else {
        if let Yaml::Array(a) = v {
            for (i, x) in a.iter().enumerate() {
                walk(x, &format!("{path}[{i}]"), app_version, out);
            }
        }
        return;
    };
    let s = |k: &str| match h.get(&Yaml::String(k.into())) {
        Some(Yaml::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Yaml::Real(s)) => Some(s.clone()),
        Some(Yaml::Integer(i)) => Some(i.to_string()),
        _ => None,
    };
    if let Some(repo) = s("repository") {
        let full = match s("registry") {
            Some(r) => format!("{r}/{repo}"),
            None => repo,
        };
        let image = match (s("digest"), s("tag").or_else(|| app_version.map(String::from))) {
            (Some(d), _) => format!("{full}@{d}"),
            (None, Some(t)) => format!("{full}:{t}"),
            (None, None) => full,
        };
        out.push((image, path.trim_start_matches('.').to_string()));
    }
    for (k, x) in h {
        let Yaml::String(key) = k else { continue };
        let here = format!("{path}.{key}");
        match x {
            Yaml::String(img) if key == "image" && !img.is_empty() => {
                out.push((img.clone(), here.trim_start_matches('.').to_string()));
            }
            _ => walk(x, &here, app_version, out),
        }
    }
}

/// Images named anywhere in a (multi-document) YAML text, e.g. an install manifest.
pub fn images_in_manifest(what: &str, text: &str) -> Result<Vec<(String, String)>, HelmError> {
    let docs =
        YamlLoader::load_from_str(text).map_err(|e| HelmError::Values { name: what.into(), reason: e.to_string() })?;
    let mut out = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let kind = d["kind"].as_str().unwrap_or("?");
        let name = d["metadata"]["name"].as_str().unwrap_or("?");
        let mut found = Vec::new();
        walk(d, "", None, &mut found);
        out.extend(found.into_iter().map(|(img, path)| (img, format!("document {} ({kind} {name}) {path}", i + 1))));
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// Does `listed` cover the image `found` names (same registry and repository; the same
/// tag or digest where `found` gives one)?
pub fn covers(listed: &ImageRef, found: &str) -> bool {
    // A value without tag or digest still names a repository: match on that.
    let parsed = ImageRef::parse(found).or_else(|_| ImageRef::parse(&format!("{found}:latest")));
    let Ok(f) = parsed else { return false };
    let tag_given = found.rsplit('/').next().is_some_and(|last| last.contains(':') || last.contains('@'));
    listed.registry == f.registry
        && listed.repository == f.repository
        && (!tag_given || f.tag.is_none() || listed.tag == f.tag)
        && (f.digest.is_none() || listed.digest == f.digest)
}

/// The first image in `found` (image, where) that no reference in `listed` covers.
pub fn first_unlisted<'a>(listed: &[String], found: &'a [(String, String)]) -> Option<&'a (String, String)> {
    let listed: Vec<ImageRef> = listed.iter().filter_map(|r| ImageRef::parse(r).ok()).collect();
    found.iter().find(|(image, _)| !listed.iter().any(|l| covers(l, image)))
}

/// Every image the chart's values name must be in the chart's `images`.
pub fn check_images(index: usize, h: &Helm, found: &[(String, String)]) -> Result<(), HelmError> {
    match first_unlisted(&h.images, found) {
        Some((image, path)) => {
            Err(HelmError::MissingImage { name: h.name.clone(), index, image: image.clone(), path: path.clone() })
        }
        None => Ok(()),
    }
}

/// A chart fetched and checked, ready to be written into the image.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub helm: Helm,
    pub archive: PathBuf,
    pub info: ChartInfo,
    pub values: String,
    pub images_found: Vec<String>,
}

/// Check a downloaded chart against its recipe entry.
pub fn check(index: usize, h: &Helm, archive: &Path, values: &str) -> Result<Fetched, HelmError> {
    let info = inspect(&h.name, archive)?;
    if info.version != h.version {
        return Err(HelmError::Version {
            name: h.name.clone(),
            chart: info.name.clone(),
            found: info.version.clone(),
            pinned: h.version.clone(),
        });
    }
    let found = images_in_values(&info, &h.name, values)?;
    check_images(index, h, &found)?;
    Ok(Fetched {
        helm: h.clone(),
        archive: archive.to_path_buf(),
        info,
        values: values.to_string(),
        images_found: found.into_iter().map(|(i, _)| i).collect(),
    })
}

/// The K3s HelmChart manifest that installs the vendored chart.
pub fn manifest(f: &Fetched, archive_bytes: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(archive_bytes);
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut m = format!(
        "# Written by edgeimg: Helm chart {chart} {version} (sha256 {sha}), vendored into the image.\n\
         # K3s's helm-controller installs it from chartContent: no network needed.\n\
         apiVersion: helm.cattle.io/v1\n\
         kind: HelmChart\n\
         metadata:\n  name: {name}\n  namespace: kube-system\n\
         spec:\n  targetNamespace: {ns}\n  createNamespace: true\n  version: {qv}\n  chartContent: {b64}\n",
        chart = f.info.name,
        version = f.info.version,
        sha = f.helm.sha256,
        name = q(&f.helm.name),
        ns = q(&f.helm.namespace),
        qv = q(&f.helm.version),
    );
    if !f.values.trim().is_empty() {
        m.push_str("  valuesContent: |-\n");
        for line in f.values.trim_end().lines() {
            if line.is_empty() {
                m.push('\n');
            } else {
                m.push_str(&format!("    {line}\n"));
            }
        }
    }
    m
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A chart archive like `helm package` makes.
    pub fn chart_tgz(dir: &Path, name: &str, version: &str, values: &str) -> PathBuf {
        let path = dir.join(format!("{name}-{version}.tgz"));
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::default());
        let mut t = tar::Builder::new(gz);
        let mut add = |p: &str, body: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, p, body.as_bytes()).unwrap();
        };
        add(
            &format!("{name}/Chart.yaml"),
            &format!("apiVersion: v2\nname: {name}\nversion: {version}\nappVersion: \"1.0\"\n"),
        );
        add(&format!("{name}/values.yaml"), values);
        add(&format!("{name}/templates/deployment.yaml"), "kind: Deployment\n");
        t.into_inner().unwrap().finish().unwrap();
        path
    }

    fn entry(images: &[&str]) -> Helm {
        Helm {
            name: "hello".into(),
            chart: "http://127.0.0.1:1/hello-0.1.0.tgz".into(),
            version: "0.1.0".into(),
            sha256: "0".repeat(64),
            namespace: "apps".into(),
            values: String::new(),
            values_file: None,
            images: images.iter().map(|s| s.to_string()).collect(),
        }
    }

    const PIN: &str = "@sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn chart_is_read_and_its_images_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let values =
            "image:\n  repository: 127.0.0.1:5000/edgeimg/hello\n  tag: \"1.0\"\nsidecar:\n  image: busybox:1.36\n";
        let tgz = chart_tgz(d.path(), "hello", "0.1.0", values);
        let info = inspect("hello", &tgz).unwrap();
        assert_eq!(
            (info.name.as_str(), info.version.as_str(), info.app_version.as_deref()),
            ("hello", "0.1.0", Some("1.0"))
        );
        let found = images_in_values(&info, "hello", "").unwrap();
        assert_eq!(
            found,
            vec![
                ("127.0.0.1:5000/edgeimg/hello:1.0".to_string(), "image".to_string()),
                ("busybox:1.36".to_string(), "sidecar.image".to_string()),
            ]
        );
        let both = entry(&[
            &format!("127.0.0.1:5000/edgeimg/hello:1.0{PIN}"),
            &format!("docker.io/library/busybox:1.36{PIN}"),
        ]);
        let f = check(0, &both, &tgz, "").unwrap();
        assert_eq!(f.images_found.len(), 2);

        // The sidecar's image is not listed: a clear error naming it and where it comes from.
        let one = entry(&[&format!("127.0.0.1:5000/edgeimg/hello:1.0{PIN}")]);
        let e = check(3, &one, &tgz, "").unwrap_err().to_string();
        assert!(e.contains("busybox:1.36") && e.contains("sidecar.image") && e.contains("helm[3].images"), "{e}");
        // User values override the chart's: another tag is another image.
        let e = check(0, &both, &tgz, "image:\n  tag: \"2.0\"\n").unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:5000/edgeimg/hello:2.0"), "{e}");
        // Turning the sidecar's image off (empty) needs no pull.
        check(0, &one, &tgz, "sidecar:\n  image: \"\"\n").unwrap();

        // A version other than the pinned one.
        let mut other = both.clone();
        other.version = "0.2.0".into();
        let e = check(0, &other, &tgz, "").unwrap_err().to_string();
        assert!(e.contains("version 0.1.0") && e.contains("pins 0.2.0"), "{e}");
        // Not a chart at all.
        std::fs::write(d.path().join("junk.tgz"), b"not gzip").unwrap();
        assert!(matches!(inspect("x", &d.path().join("junk.tgz")), Err(HelmError::NotAChart { .. })));
    }

    #[test]
    fn manifest_carries_the_chart_and_values() {
        let d = tempfile::tempdir().unwrap();
        let tgz = chart_tgz(d.path(), "hello", "0.1.0", "replicas: 1\n");
        let mut h = entry(&[]);
        h.values = "replicas: 2\nlabels:\n  site: \"shop-042\"\n".into();
        let f = check(0, &h, &tgz, &h.values.clone()).unwrap();
        let bytes = std::fs::read(&tgz).unwrap();
        let m = manifest(&f, &bytes);
        let doc = &YamlLoader::load_from_str(&m).unwrap()[0];
        assert_eq!(doc["kind"].as_str(), Some("HelmChart"));
        assert_eq!(doc["apiVersion"].as_str(), Some("helm.cattle.io/v1"));
        assert_eq!(doc["metadata"]["name"].as_str(), Some("hello"));
        assert_eq!(doc["spec"]["targetNamespace"].as_str(), Some("apps"));
        let content =
            base64::engine::general_purpose::STANDARD.decode(doc["spec"]["chartContent"].as_str().unwrap()).unwrap();
        assert_eq!(content, bytes, "the chart travels whole, byte for byte");
        let values = &YamlLoader::load_from_str(doc["spec"]["valuesContent"].as_str().unwrap()).unwrap()[0];
        assert_eq!(values["replicas"].as_i64(), Some(2));
        assert_eq!(values["labels"]["site"].as_str(), Some("shop-042"));
    }
}

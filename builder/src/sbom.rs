//! SPDX 2.3 JSON software bill of materials: the Debian packages of the image (read from
//! its own dpkg database) plus any other components a build adds (K3s, container images).

use std::path::Path;

use serde_json::{json, Value};

use crate::tools::{Cmd, ToolError};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub source: String,
    pub source_version: String,
    pub maintainer: String,
    pub installed_kib: u64,
}

/// A non-Debian component (K3s binary, container image, ...).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Component {
    pub name: String,
    pub version: String,
    /// package URL (purl), e.g. pkg:github/k3s-io/k3s@v1.34.2+k3s1 or pkg:oci/...
    pub purl: String,
    pub sha256: Option<String>,
    pub download: Option<String>,
}

/// List the installed packages of an image tree from its dpkg database.
pub fn deb_packages(admindir: &Path) -> Result<Vec<DebPackage>, ToolError> {
    let out = Cmd::new("dpkg-query")
        .arg(format!("--admindir={}", admindir.display()))
        .args([
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\t${Maintainer}\t${Installed-Size}\n",
        ])
        .run()?;
    let mut v: Vec<DebPackage> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() < 8 || !f[0].starts_with("ii") {
                return None;
            }
            Some(DebPackage {
                name: f[1].into(),
                version: f[2].into(),
                arch: f[3].into(),
                source: f[4].into(),
                source_version: f[5].into(),
                maintainer: f[6].into(),
                installed_kib: f[7].parse().unwrap_or(0),
            })
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name).then(a.arch.cmp(&b.arch)));
    Ok(v)
}

fn spdx_id(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c.to_string(),
            '+' => "plus".into(),
            _ => "-".into(),
        })
        .collect();
    format!("SPDXRef-{prefix}-{clean}")
}

fn pct(s: &str) -> String {
    s.replace('%', "%25").replace('+', "%2B").replace(':', "%3A").replace('~', "%7E")
}

pub struct Document<'a> {
    pub image: &'a str,
    pub version: &'a str,
    pub board: &'a str,
    pub build_id: &'a str,
    pub suite: &'a str,
    pub created_epoch: u64,
}

/// Render the SPDX document. Deterministic for the same inputs.
pub fn spdx(doc: &Document<'_>, debs: &[DebPackage], extra: &[Component]) -> Value {
    let created = time::OffsetDateTime::from_unix_timestamp(doc.created_epoch as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let image_id = "SPDXRef-Image".to_string();
    let mut packages = vec![json!({
        "name": doc.image,
        "SPDXID": image_id,
        "versionInfo": doc.version,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!("edgeimg image for board {}, build {}", doc.board, doc.build_id),
    })];
    let mut rels = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    for p in debs {
        let id = spdx_id("deb", &format!("{}-{}", p.name, p.arch));
        let mut purl = format!("pkg:deb/debian/{}@{}?arch={}&distro={}", p.name, pct(&p.version), p.arch, doc.suite);
        if !p.source.is_empty() && p.source != p.name {
            purl.push_str(&format!("&upstream={}", pct(&p.source)));
        }
        packages.push(json!({
            "name": p.name,
            "SPDXID": id,
            "versionInfo": p.version,
            "supplier": format!("Person: {}", p.maintainer.replace(['(', ')'], "")),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "sourceInfo": format!("built from Debian source package {} {}", p.source, p.source_version),
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl}],
        }));
        rels.push(json!({"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": id}));
    }
    for c in extra {
        let id = spdx_id("component", &c.name);
        let mut p = json!({
            "name": c.name,
            "SPDXID": id,
            "versionInfo": c.version,
            "downloadLocation": c.download.clone().unwrap_or_else(|| "NOASSERTION".into()),
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": c.purl}],
        });
        if let Some(s) = &c.sha256 {
            p["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": s}]);
        }
        packages.push(p);
        rels.push(json!({"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": id}));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}-{}", doc.image, doc.version, doc.board),
        "documentNamespace": format!("https://edgeimg.invalid/spdx/{}/{}/{}/{}", doc.board, doc.image, doc.version, doc.build_id),
        "creationInfo": {"created": created, "creators": [concat!("Tool: edgeimg-", env!("CARGO_PKG_VERSION"))]},
        "packages": packages,
        "relationships": rels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdx_shape() {
        let debs = vec![DebPackage {
            name: "libstdc++6".into(),
            version: "14.2.0-19".into(),
            arch: "amd64".into(),
            source: "gcc-14".into(),
            source_version: "14.2.0-19".into(),
            maintainer: "Debian GCC Maintainers <x@y>".into(),
            installed_kib: 1,
        }];
        let d =
            Document { image: "m", version: "1.0.0", board: "b", build_id: "id", suite: "trixie", created_epoch: 0 };
        let v = spdx(&d, &debs, &[]);
        assert_eq!(v["spdxVersion"], "SPDX-2.3");
        assert_eq!(v["creationInfo"]["created"], "1970-01-01T00:00:00Z");
        assert_eq!(v["packages"][1]["SPDXID"], "SPDXRef-deb-libstdcplusplus6-amd64");
        let purl = v["packages"][1]["externalRefs"][0]["referenceLocator"].as_str().unwrap();
        assert_eq!(purl, "pkg:deb/debian/libstdc++6@14.2.0-19?arch=amd64&distro=trixie&upstream=gcc-14");
        assert_eq!(v["relationships"].as_array().unwrap().len(), 2);
    }
}

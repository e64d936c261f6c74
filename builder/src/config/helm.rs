//! `[[helm]]` recipe entries: Helm charts vendored into the image and deployed offline by
//! the runtime's chart controller (K3s: the HelmChart resource with the chart inline).
//! Every key is documented in docs/configuration.md.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::source::{ConfigError, Source};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Helm {
    /// Release name (the HelmChart's name); lowercase letters, digits and '-'.
    pub name: String,
    /// URL of the chart archive (.tgz): https://, http:// or file://, e.g. from the chart
    /// repository's index.yaml.
    pub chart: String,
    /// Chart version: must be the `version` in the archive's Chart.yaml.
    pub version: String,
    /// sha256 of the chart archive (the repository index's `digest`).
    pub sha256: String,
    /// Namespace the chart is installed into.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Values (YAML), inline.
    #[serde(default)]
    pub values: String,
    /// Values from a YAML file relative to the recipe (instead of `values`).
    #[serde(default)]
    pub values_file: Option<PathBuf>,
    /// Every image the chart runs, pinned by digest (or locked with `edgeimg lock`): they
    /// are pre-pulled like `k3s.images`. The build refuses a chart whose values name an
    /// image missing here.
    #[serde(default)]
    pub images: Vec<String>,
}

fn default_namespace() -> String {
    "default".into()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 53
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Helm {
    pub fn validate(&self, i: usize, src: &Source, dir: &Path, has_runtime: bool) -> Result<(), ConfigError> {
        let key = |k: &str| format!("helm[{i}].{k}");
        if !has_runtime {
            return Err(src.error_at(
                &format!("helm[{i}]"),
                "charts are deployed by the runtime's chart controller: add a [k3s] section",
            ));
        }
        if !is_dns_label(&self.name) {
            return Err(src.error_at(&key("name"), "a release name: lowercase letters, digits and '-', at most 53"));
        }
        if !is_dns_label(&self.namespace) {
            return Err(src.error_at(&key("namespace"), "a namespace name: lowercase letters, digits and '-'"));
        }
        if semver::Version::parse(&self.version).is_err() {
            return Err(src.error_at(&key("version"), format!("`{}` is not a chart version like 1.2.3", self.version)));
        }
        if self.chart.starts_with("oci://") {
            self.oci_ref().map_err(|e| {
                src.error_at(
                    &key("chart"),
                    format!("an OCI chart reference such as oci://ghcr.io/org/charts/name ({e})"),
                )
            })?;
        } else if !["https://", "http://", "file://"].iter().any(|p| self.chart.starts_with(p))
            || !self.chart.ends_with(".tgz")
        {
            return Err(src.error_at(
                &key("chart"),
                "the URL of a chart archive (.tgz: https://, http:// or file://) or an oci:// chart reference",
            ));
        }
        if !super::is_sha256_hex(&self.sha256) {
            return Err(src.error_at(&key("sha256"), "64 lowercase hex digits: the chart archive's sha256"));
        }
        match (&self.values_file, self.values.trim().is_empty()) {
            (Some(_), false) => return Err(src.error_at(&key("values"), "give `values` or `values_file`, not both")),
            (Some(f), true) => {
                let text = std::fs::read_to_string(dir.join(f))
                    .map_err(|e| src.error_at(&key("values_file"), format!("{}: {e}", dir.join(f).display())))?;
                super::k3s::check_yaml_mapping(&text).map_err(|e| src.error_at(&key("values_file"), e))?;
            }
            (None, _) => super::k3s::check_yaml_mapping(&self.values).map_err(|e| src.error_at(&key("values"), e))?,
        }
        for (j, r) in self.images.iter().enumerate() {
            crate::oci::ImageRef::parse(r).map_err(|e| src.error_at(&format!("helm[{i}].images[{j}]"), e))?;
        }
        Ok(())
    }

    /// For `oci://registry/repository` charts: the reference of the chart's version tag.
    pub fn oci_ref(&self) -> Result<crate::oci::ImageRef, String> {
        let path = self.chart.strip_prefix("oci://").ok_or("not an oci:// reference")?;
        if path.contains('@') || path.rsplit('/').next().is_some_and(|last| last.contains(':')) {
            return Err("give the chart without tag or digest: the version is the tag, sha256 pins it".into());
        }
        crate::oci::ImageRef::parse(&format!("{path}:{}", self.version.replace('+', "_")))
    }

    /// The values YAML (inline or from the file).
    pub fn values_text(&self, dir: &Path) -> std::io::Result<String> {
        match &self.values_file {
            Some(f) => std::fs::read_to_string(dir.join(f)),
            None => Ok(self.values.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Recipe, Source};

    const K3S: &str = "[k3s]\nversion = \"v1.34.2+k3s1\"\nsha256 = { amd64 = \"1111111111111111111111111111111111111111111111111111111111111111\" }\nairgap_images = false\n";

    fn load(extra: &str) -> Result<(), String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.toml");
        std::fs::write(&p, format!("[image]\nname = \"x\"\nversion = \"1.0.0\"\n{extra}")).unwrap();
        Recipe::load(&Source::read(&p).unwrap()).map(|_| ()).map_err(|e| e.to_string())
    }

    fn chart(extra: &str) -> String {
        format!(
            "\n[[helm]]\nname = \"hello\"\nchart = \"https://charts.example.com/hello-0.1.0.tgz\"\nversion = \"0.1.0\"\nsha256 = \"{}\"\n{extra}",
            "a".repeat(64)
        )
    }

    #[test]
    fn helm_entries_are_validated() {
        load(&format!("{K3S}{}", chart(""))).unwrap();
        let e = load(&chart("")).unwrap_err();
        assert!(e.contains("helm[0]") && e.contains("add a [k3s] section"), "{e}");
        let e = load(&format!("{K3S}{}{}", chart(""), chart(""))).unwrap_err();
        assert!(e.contains("helm[1].name") && e.contains("listed twice"), "{e}");
        let e = load(&format!("{K3S}{}", chart("values = \"a: 1\"\nvalues_file = \"v.yaml\"\n"))).unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = load(&format!("{K3S}{}", chart("values = \"- a\\n- b\\n\"\n"))).unwrap_err();
        assert!(e.contains("helm[0].values"), "{e}");
        let e = load(&format!("{K3S}{}", chart("images = [\"nginx\"]\n"))).unwrap_err();
        assert!(e.contains("helm[0].images[0]"), "{e}");
        let oci = chart("").replace("https://charts.example.com/hello-0.1.0.tgz", "oci://ghcr.io/x/hello");
        load(&format!("{K3S}{oci}")).unwrap();
        let tagged = chart("").replace("https://charts.example.com/hello-0.1.0.tgz", "oci://ghcr.io/x/hello:0.1.0");
        assert!(load(&format!("{K3S}{tagged}")).unwrap_err().contains("the version is the tag"));
        let bad = chart("").replace(&"a".repeat(64), "abc");
        assert!(load(&format!("{K3S}{bad}")).unwrap_err().contains("helm[0].sha256"));
    }
}

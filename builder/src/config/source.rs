//! Parsing TOML into typed structs with errors that name the file, line and key.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

/// A configuration error, located in its source file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the position is known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `disk.root_mib` or `user[1].name`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A TOML file kept in memory so that later validation errors can point into it.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Ok(Self { path: path.to_path_buf(), text })
    }

    pub fn from_text(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Self { path: path.into(), text: text.into() }
    }

    /// Deserialize the whole document. Unknown keys are rejected by the target types
    /// (`deny_unknown_fields`); the error says where.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let de = toml::de::Deserializer::parse(&self.text).map_err(|e| self.toml_error(&e, None))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = path_to_key(e.path());
            self.toml_error(e.inner(), key)
        })
    }

    fn toml_error(&self, e: &toml::de::Error, key: Option<String>) -> ConfigError {
        let line = e.span().map(|s| self.line_of(s.start)).or_else(|| key.as_deref().and_then(|k| self.line_of_key(k)));
        ConfigError { file: self.path.clone(), line, key, message: e.message().trim().to_string() }
    }

    /// An error about a key found valid by the parser but rejected by validation.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            line: self.line_of_key(key),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// Find the line where a dotted key (with `[n]` array indices) is defined.
    /// Falls back to the nearest enclosing key that exists.
    pub fn line_of_key(&self, key: &str) -> Option<usize> {
        let doc = DeTable::parse(&self.text).ok()?;
        let segments = split_key(key);
        let mut best = None;
        let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
        let mut value: Option<&toml::Spanned<DeValue<'_>>> = None;
        for seg in segments {
            match seg {
                Segment::Key(name) => {
                    let Some(t) = table else { break };
                    let Some((k, v)) = t.iter().find(|(k, _)| k.get_ref() == name) else {
                        break;
                    };
                    best = Some(k.span().start);
                    value = Some(v);
                }
                Segment::Index(i) => {
                    let Some(arr) = value.and_then(|v| v.get_ref().as_array()) else {
                        break;
                    };
                    let Some(item) = arr.get(i) else { break };
                    best = Some(item.span().start);
                    value = Some(item);
                }
            }
            table = value.and_then(|v| v.get_ref().as_table());
        }
        best.map(|off| self.line_of(off))
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_key(key: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(n) = idx.trim_end_matches(']').parse() {
                out.push(Segment::Index(n));
            }
        }
    }
    out
}

fn path_to_key(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment as S;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            S::Seq { index } => out.push_str(&format!("[{index}]")),
            S::Map { key } | S::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            S::Unknown => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        #[serde(default)]
        disk: Disk,
        #[serde(default)]
        user: Vec<User>,
    }
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Disk {
        #[serde(default)]
        size_mib: u64,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct User {
        name: String,
    }

    fn parse(text: &str) -> Result<Doc, ConfigError> {
        Source::from_text("t.toml", text).parse()
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("name = 'x'\n\n[disk]\nsize_mib = 3\nsizee = 4\n").unwrap_err();
        let s = e.to_string();
        assert_eq!(e.line, Some(5), "{s}");
        assert!(s.starts_with("t.toml:5"), "{s}");
        assert!(s.contains("sizee"), "{s}");
    }

    #[test]
    fn wrong_type_names_key_path() {
        let e = parse("name = 'x'\n[[user]]\nname = 'a'\n[[user]]\nname = 7\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("user[1].name"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
    }

    #[test]
    fn missing_key_is_reported() {
        let e = parse("[disk]\n").unwrap_err();
        assert!(e.message.contains("name"), "{e}");
    }

    #[test]
    fn line_of_key_walks_tables_and_arrays() {
        let src = Source::from_text("t", "name='x'\n[disk]\n\nsize_mib=1\n[[user]]\nname='a'\n[[user]]\nname='b'\n");
        assert_eq!(src.line_of_key("disk.size_mib"), Some(4));
        assert_eq!(src.line_of_key("user[1].name"), Some(8));
        assert_eq!(src.line_of_key("disk.nope"), Some(2));
    }
}

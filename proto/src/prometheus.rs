//! The Prometheus text exposition format (0.0.4), written by the update server's
//! `/metrics` and the device updater's metrics endpoint alike.

use std::fmt::Write;

/// A metrics page being written: families (HELP and TYPE) and their samples.
#[derive(Debug, Default)]
pub struct Text(pub String);

impl Text {
    pub fn with_capacity(n: usize) -> Self {
        Text(String::with_capacity(n))
    }

    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// Label values: backslash, double quote and line feed are escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_escaping() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut t = Text::default();
        t.family("m", "gauge", "Help.");
        t.sample("m", &[], 1);
        t.sample("m", &[("a", "x\"y"), ("b", "z")], 2);
        assert_eq!(t.0, "# HELP m Help.\n# TYPE m gauge\nm 1\nm{a=\"x\\\"y\",b=\"z\"} 2\n");
    }
}

//! Host tools: finding them (with the apt package that provides each), running them with
//! errors that show the command and what it printed.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A host program and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub bin: &'static str,
    pub package: &'static str,
}

pub const MMDEBSTRAP: Tool = Tool { bin: "mmdebstrap", package: "mmdebstrap" };
pub const MKFS_EROFS: Tool = Tool { bin: "mkfs.erofs", package: "erofs-utils" };
pub const VERITYSETUP: Tool = Tool { bin: "veritysetup", package: "cryptsetup-bin" };
pub const MKFS_VFAT: Tool = Tool { bin: "mkfs.vfat", package: "dosfstools" };
pub const MCOPY: Tool = Tool { bin: "mcopy", package: "mtools" };
pub const MMD: Tool = Tool { bin: "mmd", package: "mtools" };
pub const MKFS_EXT4: Tool = Tool { bin: "mkfs.ext4", package: "e2fsprogs" };
pub const DPKG_QUERY: Tool = Tool { bin: "dpkg-query", package: "dpkg" };
pub const SBSIGN: Tool = Tool { bin: "sbsign", package: "sbsigntool" };
pub const SYSTEMCTL: Tool = Tool { bin: "systemctl", package: "systemd" };
pub const MKIMAGE: Tool = Tool { bin: "mkimage", package: "u-boot-tools" };

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("missing host tools: {}. Install them with: apt-get install -y {}", .0.iter().map(|t| t.bin).collect::<Vec<_>>().join(", "), packages(.0))]
    Missing(Vec<Tool>),
    #[error("could not start `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}):\n{output}")]
    Failed { cmd: String, status: String, output: String },
}

fn packages(tools: &[Tool]) -> String {
    let mut p: Vec<&str> = tools.iter().map(|t| t.package).collect();
    p.sort();
    p.dedup();
    p.join(" ")
}

/// Directories searched besides $PATH: a non-root shell often lacks the sbin ones.
const EXTRA_DIRS: [&str; 4] = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"];

/// Find a host program. `EDGEIMG_TOOL_PATH`, when set, is the only place searched (for
/// pinning tool versions); otherwise $PATH and the sbin directories.
pub fn find(bin: &str) -> Option<PathBuf> {
    if let Some(only) = std::env::var_os("EDGEIMG_TOOL_PATH") {
        return std::env::split_paths(&only).map(|d| d.join(bin)).find(|p| is_executable(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Fail with one error listing every missing tool and the apt packages that provide them.
pub fn require(tools: &[Tool]) -> Result<(), ToolError> {
    let missing: Vec<Tool> = tools.iter().copied().filter(|t| find(t.bin).is_none()).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ToolError::Missing(missing))
    }
}

/// Version of the Debian package that provides a tool, for the build report.
pub fn package_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f", "${Version}", package]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A command line being assembled; `run` executes it and turns failure into a readable error.
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let p = program.as_ref();
        let resolved = p.to_str().and_then(find).map(PathBuf::into_os_string);
        Self { program: resolved.unwrap_or_else(|| p.to_os_string()), args: Vec::new(), envs: Vec::new(), cwd: None }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(it.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs.push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }

    pub fn current_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.cwd = Some(d.into());
        self
    }

    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| {
                let s = a.to_string_lossy();
                if s.contains(char::is_whitespace) || s.is_empty() {
                    format!("'{s}'")
                } else {
                    s.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        c
    }

    /// Run, capturing output; on failure the error carries the tail of stdout+stderr.
    pub fn run(&self) -> Result<String, ToolError> {
        tracing::debug!(cmd = %self.display(), "run");
        let out = self
            .command()
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ToolError::Spawn { cmd: self.display(), source })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            let mut all = stdout;
            all.push_str(&String::from_utf8_lossy(&out.stderr));
            Err(ToolError::Failed { cmd: self.display(), status: out.status.to_string(), output: tail(&all, 40) })
        }
    }

    /// Run with output streamed line by line to `on_line` (stderr and stdout merged), keeping
    /// the tail for the error message.
    pub fn run_streaming(&self, mut on_line: impl FnMut(&str)) -> Result<(), ToolError> {
        use std::io::{BufRead, BufReader};
        tracing::debug!(cmd = %self.display(), "run");
        let (reader, writer) = std::io::pipe().map_err(|source| ToolError::Spawn { cmd: self.display(), source })?;
        let writer2 = writer.try_clone().map_err(|source| ToolError::Spawn { cmd: self.display(), source })?;
        let mut cmd = self.command();
        cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
        let mut child = cmd.spawn().map_err(|source| ToolError::Spawn { cmd: self.display(), source })?;
        drop(cmd);
        let mut last: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            on_line(&line);
            if last.len() == 40 {
                last.pop_front();
            }
            last.push_back(line);
        }
        let status = child.wait().map_err(|source| ToolError::Spawn { cmd: self.display(), source })?;
        if status.success() {
            Ok(())
        } else {
            Err(ToolError::Failed {
                cmd: self.display(),
                status: status.to_string(),
                output: last.into_iter().collect::<Vec<_>>().join("\n"),
            })
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_package() {
        let t = Tool { bin: "definitely-not-a-tool-edgeimg", package: "edgeimg-fake-pkg" };
        let e = require(&[t, MKFS_EXT4]).unwrap_err().to_string();
        assert!(e.contains("definitely-not-a-tool-edgeimg"), "{e}");
        assert!(e.contains("apt-get install -y edgeimg-fake-pkg"), "{e}");
    }

    #[test]
    fn failure_carries_output() {
        let e = Cmd::new("sh").args(["-c", "echo oops >&2; exit 3"]).run().unwrap_err().to_string();
        assert!(e.contains("oops") && e.contains("exit status: 3"), "{e}");
    }

    #[test]
    fn streaming_sees_lines() {
        let mut seen = Vec::new();
        Cmd::new("sh").args(["-c", "echo a; echo b >&2"]).run_streaming(|l| seen.push(l.to_string())).unwrap();
        seen.sort();
        assert_eq!(seen, ["a", "b"]);
    }
}

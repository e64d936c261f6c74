//! Board and recipe files.

pub mod board;
pub mod gitops;
pub mod helm;
pub mod k3s;
pub mod recipe;
pub mod secure_boot;
pub mod source;
pub mod updater;

use std::path::{Path, PathBuf};

pub use board::{Arch, Board, BootBackend};
pub use recipe::{Compression, LoadedRecipe, Recipe};
pub use source::{ConfigError, Source};

/// 64 lowercase hex digits: how recipes pin a sha256.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Boards shipped with edgeimg, compiled in so that `--board NAME` works from any directory.
pub const BUILTIN_BOARDS: &[(&str, &str)] = &[
    ("qemu-x86_64", include_str!("../../../boards/qemu-x86_64.toml")),
    ("nuc", include_str!("../../../boards/nuc.toml")),
    ("qemu-arm64", include_str!("../../../boards/qemu-arm64.toml")),
    ("rpi4", include_str!("../../../boards/rpi4.toml")),
    ("rpi4-tryboot", include_str!("../../../boards/rpi4-tryboot.toml")),
    ("rpi5", include_str!("../../../boards/rpi5.toml")),
    ("jetson-orin-nano", include_str!("../../../boards/jetson-orin-nano.toml")),
];

/// Find a board by name (in `boards_dir`, then the built-in set) or by path.
pub fn load_board(arg: &str, boards_dir: Option<&Path>) -> Result<(Board, Source), ConfigError> {
    let looks_like_path = arg.contains('/') || arg.ends_with(".toml");
    let src = if looks_like_path {
        Source::read(Path::new(arg))?
    } else {
        let dir = boards_dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("boards"));
        let file = dir.join(format!("{arg}.toml"));
        if file.is_file() {
            Source::read(&file)?
        } else if let Some((name, text)) = BUILTIN_BOARDS.iter().find(|(n, _)| *n == arg) {
            Source::from_text(format!("<built-in board {name}>"), *text)
        } else {
            let mut known: Vec<String> = BUILTIN_BOARDS.iter().map(|(n, _)| n.to_string()).collect();
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if let Some(n) = e.file_name().to_str().and_then(|n| n.strip_suffix(".toml")) {
                        known.push(n.to_string());
                    }
                }
            }
            known.sort();
            known.dedup();
            return Err(ConfigError {
                file: file.clone(),
                line: None,
                key: None,
                message: format!(
                    "unknown board `{arg}`; known boards: {}. Pass a path to use your own board file.",
                    known.join(", ")
                ),
            });
        }
    };
    let board = Board::load(&src)?;
    if !looks_like_path && board.name != arg {
        return Err(src.error_at("name", format!("the file is named `{arg}` but says name = \"{}\"", board.name)));
    }
    Ok((board, src))
}

pub fn load_recipe(path: &Path) -> Result<LoadedRecipe, ConfigError> {
    Recipe::load(&Source::read(path)?)
}

//! docs/configuration.md must list exactly the keys the code accepts, its full examples
//! must parse, and every shipped board and recipe must load.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use edgeimg::config::{self, Board, Recipe};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn doc() -> String {
    std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap()
}

/// Keys in the first column of the table under `heading`.
fn table_keys(doc: &str, heading: &str) -> BTreeSet<String> {
    let start = doc.find(heading).unwrap_or_else(|| panic!("no heading {heading}"));
    doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .map(|c| c.trim().trim_matches('`').to_string())
        .filter(|k| k != "key" && !k.starts_with("---"))
        .collect()
}

/// The first ```toml block after `heading`.
fn example(doc: &str, heading: &str) -> String {
    let start = doc.find(heading).unwrap();
    let rest = &doc[start..];
    let b = rest.find("```toml\n").unwrap() + 8;
    let e = rest[b..].find("```").unwrap() + b;
    rest[b..e].to_string()
}

/// Keys whose values are maps with free-form keys (architectures): documented as one key.
const MAP_KEYS: &[&str] = &["k3s.sha256", "k3s.airgap_sha256", "boot.write"];

fn key_paths(v: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if MAP_KEYS.contains(&prefix) {
        out.insert(prefix.to_string());
        return;
    }
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                key_paths(v, &p, out);
            }
        }
        // A list of lists (health_commands) is one key.
        toml::Value::Array(a) if a.first().is_some_and(|x| x.is_array()) => {
            out.insert(prefix.to_string());
        }
        toml::Value::Array(a) if a.first().is_some_and(|x| x.is_table()) => {
            for x in a {
                key_paths(x, &format!("{prefix}[]"), out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

fn paths_of(v: &toml::Value) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    key_paths(v, "", &mut s);
    s
}

#[test]
fn board_docs_match_schema() {
    let doc = doc();
    let ex = example(&doc, "### Full board example");
    let board: Board = toml::from_str(&ex).expect("the full board example parses");
    let from_code = paths_of(&toml::Value::try_from(&board).unwrap());
    let from_example = paths_of(&toml::from_str(&ex).unwrap());
    let from_table = table_keys(&doc, "## Board keys");
    assert_eq!(from_code, from_example, "the full example must set every key the code has");
    assert_eq!(from_code, from_table, "the table must document every key, and only those");
}

#[test]
fn recipe_docs_match_schema() {
    let doc = doc();
    let ex = example(&doc, "### Full recipe example");
    let recipe: Recipe = toml::from_str(&ex).expect("the full recipe example parses");
    let from_code = paths_of(&toml::Value::try_from(&recipe).unwrap());
    let from_example = paths_of(&toml::from_str(&ex).unwrap());
    let from_table = table_keys(&doc, "## Recipe keys");
    // Empty arrays serialize as arrays of scalars; the example gives them as such too.
    assert_eq!(from_code, from_example, "the full example must set every key the code has");
    assert_eq!(from_code, from_table, "the table must document every key, and only those");
}

#[test]
fn every_shipped_board_loads() {
    let mut n = 0;
    for e in std::fs::read_dir(repo().join("boards")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_str().unwrap().to_string();
        let (b, _) = config::load_board(&name, Some(&repo().join("boards"))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.name, name);
        // The built-in copy is the same file.
        let builtin = config::BUILTIN_BOARDS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
        assert_eq!(builtin, Some(std::fs::read_to_string(&p).unwrap().as_str()), "{name} is not in BUILTIN_BOARDS");
        n += 1;
    }
    assert_eq!(n, config::BUILTIN_BOARDS.len());
}

#[test]
fn every_shipped_recipe_loads() {
    let mut found = 0;
    for dir in ["recipes", "tests/recipes"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                config::load_recipe(&p).unwrap_or_else(|e| panic!("{e}"));
                found += 1;
            }
        }
    }
    assert!(found >= 2);
}

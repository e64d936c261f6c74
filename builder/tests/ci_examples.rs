//! The example CI pipelines in ci/examples/ must call edgeimg the way it is: every
//! `edgeimg …` command in their `run:` / `script:` entries is parsed with the real command
//! line (`edgeimg::cli::Cli`), so a renamed or misspelled flag, a missing required flag or a
//! bad value fails here. CI placeholders (`${{ matrix.board }}`, `$VERSION`) are replaced
//! by sample values: the pipeline's own literal `env:` / `variables:` and matrix entries,
//! then the table `SAMPLES` (values a job computes or the CI system provides). A
//! placeholder with no sample value, or a shell construct this test cannot follow inside an
//! `edgeimg` command, is an error too, so nothing is skipped silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches};
use edgeimg::cli::Cli;
use yaml_rust2::{Yaml, YamlLoader};

/// Sample values for what a job sets itself or the CI system provides.
const SAMPLES: &[(&str, &str)] = &[
    ("VERSION", "1.4.0"),
    ("KEYS", "/tmp/tuf-keys-1234"),
    ("TUF_REPO", "/srv/edgeimg/repo"),
    ("EDGEIMG_SERVER", "https://updates.example.com"),
];

/// YAML keys whose values are shell scripts (GitHub Actions, GitLab CI).
const SCRIPT_KEYS: &[&str] = &["run", "script", "before_script", "after_script"];

fn sample(name: &str) -> Result<String, String> {
    SAMPLES.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string()).ok_or_else(|| {
        format!("no sample value for `{name}`: define it in the pipeline or add it to SAMPLES in this test")
    })
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One `edgeimg` command found in a pipeline.
#[derive(Debug)]
struct Found {
    /// The command as written (after joining continuation lines).
    text: String,
    /// Its arguments after substitution, or why they could not be worked out.
    argv: Result<Vec<String>, String>,
}

/// What a pipeline file holds for this test.
#[derive(Debug, Default)]
struct Pipeline {
    scripts: Vec<String>,
    /// Literal `env:` / `variables:` values and matrix entries (`matrix.board` on GitHub,
    /// `BOARD` on GitLab), first definition wins.
    vars: BTreeMap<String, String>,
    /// Every value of a matrix entry named board/BOARD.
    boards: BTreeSet<String>,
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn walk(y: &Yaml, p: &mut Pipeline) {
    match y {
        Yaml::Hash(h) => {
            for (k, v) in h {
                let Some(key) = k.as_str() else {
                    walk(v, p);
                    continue;
                };
                if SCRIPT_KEYS.contains(&key) {
                    match v {
                        Yaml::Array(a) => p.scripts.extend(a.iter().filter_map(scalar)),
                        other => p.scripts.extend(scalar(other)),
                    }
                }
                if key == "env" || key == "variables" {
                    if let Yaml::Hash(vars) = v {
                        for (name, value) in vars {
                            if let (Some(n), Some(val)) = (name.as_str(), scalar(value)) {
                                p.vars.entry(n.to_string()).or_insert(val);
                            }
                        }
                    }
                }
                if key == "matrix" {
                    matrix(v, p);
                }
                walk(v, p);
            }
        }
        Yaml::Array(a) => a.iter().for_each(|x| walk(x, p)),
        _ => {}
    }
}

/// GitHub: `matrix: {board: [a, b]}` → `matrix.board`; GitLab: `matrix: [{BOARD: [a, b]}]`
/// → `BOARD`. The first value is the sample.
fn matrix(v: &Yaml, p: &mut Pipeline) {
    let mut entries = |h: &yaml_rust2::yaml::Hash, prefix: &str| {
        for (name, values) in h {
            let Some(n) = name.as_str() else { continue };
            let list: Vec<String> = match values {
                Yaml::Array(a) => a.iter().filter_map(scalar).collect(),
                other => scalar(other).into_iter().collect(),
            };
            if n.eq_ignore_ascii_case("board") {
                p.boards.extend(list.iter().cloned());
            }
            if let Some(first) = list.first() {
                p.vars.entry(format!("{prefix}{n}")).or_insert_with(|| first.clone());
            }
        }
    };
    match v {
        Yaml::Hash(h) => entries(h, "matrix."),
        Yaml::Array(a) => a.iter().filter_map(Yaml::as_hash).for_each(|h| entries(h, "")),
        _ => {}
    }
}

fn load(text: &str) -> Pipeline {
    let docs = YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("not valid YAML: {e}"));
    let mut p = Pipeline::default();
    docs.iter().for_each(|d| walk(d, &mut p));
    p
}

impl Pipeline {
    /// The value of a placeholder: a pipeline variable (itself resolved), else a sample.
    fn value(&self, name: &str, depth: usize) -> Result<String, String> {
        if depth > 8 {
            return Err(format!("`{name}` refers to itself"));
        }
        if let Some(v) = self.vars.get(name) {
            return self.expand_expressions(v, depth + 1);
        }
        sample(name)
    }

    /// Replace GitHub expressions `${{ a.b.c }}` (done before the shell runs, so also inside
    /// single quotes): the whole expression if the pipeline defines it (`matrix.board`),
    /// else the sample of its last part (`vars.TUF_REPO` → `TUF_REPO`; a repository variable,
    /// not the job's `env:` entry of that name).
    fn expand_expressions(&self, s: &str, depth: usize) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${{") {
            out.push_str(&rest[..i]);
            let end = rest[i..].find("}}").ok_or_else(|| format!("unclosed `${{{{` in {s}"))? + i;
            let expr = rest[i + 3..end].trim();
            let value = if self.vars.contains_key(expr) {
                self.value(expr, depth)?
            } else {
                let last = expr.rsplit('.').next().unwrap_or(expr);
                if !last.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                    return Err(format!("cannot give a sample value for the expression `{expr}`"));
                }
                sample(last)?
            };
            out.push_str(&value);
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Every `edgeimg` command in the pipeline's scripts.
    fn commands(&self) -> Vec<Found> {
        let mut out = Vec::new();
        for script in &self.scripts {
            let joined = script.replace("\\\n", "");
            for line in joined.lines() {
                for cmd in split_commands(line) {
                    if let Some(c) = edgeimg_command(&cmd) {
                        let argv = self.expand_expressions(c, 0).and_then(|s| self.words(&s));
                        out.push(Found { text: c.trim().to_string(), argv });
                    }
                }
            }
        }
        out
    }

    /// Split a command into words as the shell would, expanding `$NAME` and `${NAME}`.
    fn words(&self, cmd: &str) -> Result<Vec<String>, String> {
        let mut words = Vec::new();
        let mut cur: Option<String> = None;
        let mut chars = cmd.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                c if c.is_whitespace() => words.extend(cur.take()),
                '#' if cur.is_none() => break,
                '\'' => {
                    let w = cur.get_or_insert_with(String::new);
                    loop {
                        match chars.next() {
                            Some('\'') => break,
                            Some(c) => w.push(c),
                            None => return Err(format!("unclosed ' in: {cmd}")),
                        }
                    }
                }
                '"' => {
                    cur.get_or_insert_with(String::new);
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some('\\') => match chars.next() {
                                Some(e @ ('"' | '\\' | '$' | '`')) => cur.as_mut().unwrap().push(e),
                                Some(e) => cur.as_mut().unwrap().extend(['\\', e]),
                                None => return Err(format!("unclosed \" in: {cmd}")),
                            },
                            Some('$') => {
                                let v = self.dollar(&mut chars, cmd)?;
                                cur.as_mut().unwrap().push_str(&v);
                            }
                            Some('`') => return Err(format!("command substitution in an edgeimg command: {cmd}")),
                            Some(c) => cur.as_mut().unwrap().push(c),
                            None => return Err(format!("unclosed \" in: {cmd}")),
                        }
                    }
                }
                '\\' => {
                    if let Some(e) = chars.next() {
                        cur.get_or_insert_with(String::new).push(e);
                    }
                }
                '$' => {
                    let v = self.dollar(&mut chars, cmd)?;
                    cur.get_or_insert_with(String::new).push_str(&v);
                }
                '`' | '>' | '<' | '*' | '?' | '[' => {
                    return Err(format!("`{c}` in an edgeimg command: this test cannot follow it: {cmd}"))
                }
                c => cur.get_or_insert_with(String::new).push(c),
            }
        }
        words.extend(cur);
        Ok(words)
    }

    /// After a `$`: `NAME` or `{NAME}`; anything else (`$(…)`, `${X#v}`) is refused.
    fn dollar(&self, chars: &mut std::iter::Peekable<std::str::Chars<'_>>, cmd: &str) -> Result<String, String> {
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        match chars.peek() {
            Some('{') => {
                chars.next();
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unclosed ${{ in: {cmd}")),
                    }
                }
                if name.is_empty() || !name.chars().all(ident) {
                    return Err(format!("`${{{name}}}` in an edgeimg command: only $NAME and ${{NAME}} are checked"));
                }
                self.value(&name, 0)
            }
            Some(&c) if c.is_ascii_alphabetic() || c == '_' => {
                let mut name = String::new();
                while let Some(&c) = chars.peek().filter(|c| ident(**c)) {
                    name.push(c);
                    chars.next();
                }
                self.value(&name, 0)
            }
            Some('(') => Err(format!("command substitution in an edgeimg command: {cmd}")),
            _ => Ok("$".into()),
        }
    }
}

/// Split a line at `;`, `&&`, `||`, `|` outside quotes; `$( … )` contents are also given
/// as commands of their own.
fn split_commands(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let b: Vec<char> = line.chars().collect();
    let (mut single, mut double) = (false, false);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '\\' if !single && i + 1 < b.len() => {
                cur.push(c);
                cur.push(b[i + 1]);
                i += 2;
                continue;
            }
            '$' if !single && b.get(i + 1) == Some(&'(') => {
                // Find the matching parenthesis; check what is inside on its own.
                let mut depth = 0;
                let mut j = i + 1;
                while j < b.len() {
                    match b[j] {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                let inner: String = b[i + 2..j.min(b.len())].iter().collect();
                out.extend(split_commands(&inner));
                cur.extend(&b[i..(j + 1).min(b.len())]);
                i = j + 1;
                continue;
            }
            '#' if !single && !double && cur.chars().last().is_none_or(char::is_whitespace) => break,
            ';' | '|' | '&' if !single && !double => {
                out.push(std::mem::take(&mut cur));
                while b.get(i + 1).is_some_and(|n| matches!(n, '|' | '&')) {
                    i += 1;
                }
                i += 1;
                continue;
            }
            _ => {}
        }
        cur.push(c);
        i += 1;
    }
    out.push(cur);
    out.retain(|c| !c.trim().is_empty());
    out
}

/// If the command runs edgeimg (possibly after `!`, `if`, `then`, `{`, assignments), the
/// part from `edgeimg` on.
fn edgeimg_command(cmd: &str) -> Option<&str> {
    let mut rest = cmd.trim_start();
    loop {
        let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..word_end];
        let is_assignment = word.split_once('=').is_some_and(|(n, _)| {
            !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !word.contains(['"', '\''])
        });
        if matches!(
            word,
            "!" | "{" | "(" | "if" | "then" | "else" | "elif" | "do" | "while" | "until" | "time" | "exec"
        ) || is_assignment
        {
            rest = rest[word_end..].trim_start();
            continue;
        }
        return (word == "edgeimg").then_some(rest);
    }
}

/// Parse with the real command tree. `--help` and `--version` count as parsed.
fn parse(argv: &[String]) -> Result<(), String> {
    let matches = Cli::command().try_get_matches_from(argv);
    match matches {
        Ok(m) => Cli::from_arg_matches(&m).map(|_| ()).map_err(|e| e.to_string()),
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A command (or matrix entry) and what is wrong with it.
#[derive(Debug)]
struct Problem {
    what: String,
    error: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n    {}", self.what, self.error.trim_end().replace('\n', "\n    "))
    }
}

/// Every problem with a pipeline's edgeimg commands, and the commands (`build`,
/// `rollout canary`, …) it runs.
fn check(text: &str) -> (Vec<Problem>, BTreeSet<String>) {
    let p = load(text);
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for f in p.commands() {
        match &f.argv {
            Err(e) => problems.push(Problem { what: f.text.clone(), error: e.clone() }),
            Ok(argv) => {
                if let Err(e) = parse(argv) {
                    problems.push(Problem { what: format!("{}\n    as {argv:?}", f.text), error: e });
                }
                let sub: Vec<&str> = argv.iter().skip(1).take(2).map(String::as_str).collect();
                match sub.as_slice() {
                    ["rollout", channel] => seen.insert(format!("rollout {channel}")),
                    [first, ..] => seen.insert(first.to_string()),
                    [] => seen.insert(String::new()),
                };
            }
        }
    }
    let boards_dir = repo().join("boards");
    for b in &p.boards {
        if let Err(e) = edgeimg::config::load_board(b, Some(&boards_dir)) {
            problems.push(Problem { what: format!("matrix board {b}"), error: e.to_string() });
        }
    }
    (problems, seen)
}

fn check_file(rel: &str) {
    let path = repo().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (problems, seen) = check(&text);
    let list: Vec<String> = problems.iter().map(Problem::to_string).collect();
    assert!(list.is_empty(), "{rel}: edgeimg commands that do not parse:\n  {}", list.join("\n  "));
    for need in ["build", "publish", "rollout canary", "rollout stable"] {
        assert!(seen.contains(need), "{rel} does not run `edgeimg {need}` (it runs {seen:?})");
    }
    let p = load(&text);
    assert!(p.boards.len() >= 2, "{rel}: expected a matrix over the boards, found {:?}", p.boards);
}

#[test]
fn github_actions_example_uses_real_flags() {
    check_file("ci/examples/github-actions.yml");
}

#[test]
fn gitlab_ci_example_uses_real_flags() {
    check_file("ci/examples/gitlab-ci.yml");
}

/// The checker itself: it must find commands in every shape the examples use, and refuse
/// what is wrong.
#[test]
fn checker_finds_and_refuses() {
    let good = r#"
env:
  PCT: "10"
jobs:
  a:
    strategy:
      matrix:
        board: [nuc]
    env:
      BOARD: ${{ matrix.board }}
    steps:
      - run: |
          VERSION=1.0.0
          edgeimg publish "out/$BOARD/img/${VERSION}" --repo /r --keys "$KEYS" # a comment
          ! edgeimg rollout canary --repo /r --keys /k --board "${{ matrix.board }}" \
            --release "$VERSION" --percent "$PCT" && echo done
          x=$(edgeimg rollout stable --repo /r --keys /k --board nuc --release 1.0.0 --percent 5)
          echo "edgeimg build is not run here"; cargo install --path /tmp/edgeimg/builder
      - run: edgeimg build --board nuc --recipe r.toml --version 1.0.0
"#;
    let (problems, seen) = check(good);
    assert!(problems.is_empty(), "{problems:#?}");
    let expect: BTreeSet<String> =
        ["build", "publish", "rollout canary", "rollout stable"].into_iter().map(String::from).collect();
    assert_eq!(seen, expect);

    let bad = [
        // A misspelled flag.
        ("edgeimg publish out --repo /r --keys /k --chanel canary", "--chanel"),
        // A missing required flag.
        ("edgeimg rollout canary --repo /r --board nuc --release 1.0.0 --percent 5", "--keys"),
        // A value of the wrong type, from a placeholder.
        ("edgeimg rollout canary --repo /r --keys /k --board nuc --percent \"$NOT_A_NUMBER\"", "'ten'"),
        // A placeholder nobody defines.
        ("edgeimg build --board \"$UNDEFINED_THING\" --recipe r.toml", "UNDEFINED_THING"),
        // Something this test cannot follow.
        ("edgeimg publish \"$(ls -d out/*)\" --repo /r --keys /k", "command substitution"),
        // A board that does not exist.
        ("echo", "unknown board"),
    ];
    for (line, needle) in bad {
        let yaml = format!(
            "variables:\n  NOT_A_NUMBER: ten\njob:\n  parallel:\n    matrix:\n      - BOARD: [{}]\n  script:\n    - '{}'\n",
            if line == "echo" { "rpi9" } else { "nuc" },
            line.replace('\'', "''")
        );
        let (problems, _) = check(&yaml);
        assert!(
            problems.iter().any(|p| p.error.contains(needle)),
            "`{line}` should be refused with an error naming {needle}: {problems:#?}"
        );
    }
}

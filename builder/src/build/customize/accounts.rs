//! Users, groups and SSH keys, written straight into the image's account files.
//!
//! Done in Rust instead of `useradd --root` so the result is byte-for-byte reproducible
//! (no "last changed" day from the clock, no random salts) and works for foreign
//! architectures without emulation.

use std::fs;
use std::io;
use std::path::Path;

use crate::config::recipe::User;
use crate::fsutil::{in_root, write_file};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(
        "user `{user}`: group `{group}` does not exist in the image; create it with a package or drop it from `groups`"
    )]
    UnknownGroup { user: String, group: String },
    #[error("user `{user}`: uid {uid} is already taken by `{owner}` in the image")]
    UidTaken { user: String, uid: u32, owner: String },
    #[error("user `{0}` already exists in the image (a package created it); pick another name")]
    Exists(String),
}

struct Table {
    lines: Vec<Vec<String>>,
}

impl Table {
    fn read(root: &Path, file: &str) -> io::Result<Self> {
        let text = fs::read_to_string(in_root(root, file)).unwrap_or_default();
        Ok(Self {
            lines: text.lines().filter(|l| !l.is_empty()).map(|l| l.split(':').map(str::to_string).collect()).collect(),
        })
    }
    fn find(&self, name: &str) -> Option<&Vec<String>> {
        self.lines.iter().find(|l| l[0] == name)
    }
    fn find_mut(&mut self, name: &str) -> Option<&mut Vec<String>> {
        self.lines.iter_mut().find(|l| l[0] == name)
    }
    fn id_owner(&self, id: u32) -> Option<&str> {
        self.lines.iter().find(|l| l.get(2).and_then(|s| s.parse().ok()) == Some(id)).map(|l| l[0].as_str())
    }
    fn write(&self, root: &Path, file: &str, mode: u32) -> io::Result<()> {
        let mut s = String::new();
        for l in &self.lines {
            s.push_str(&l.join(":"));
            s.push('\n');
        }
        write_file(root, file, s, mode)
    }
}

/// Home directory of a recipe user (on the data partition through /home -> /var/home).
pub fn home_of(u: &User) -> String {
    if u.name == "root" {
        "/root".into()
    } else {
        format!("/home/{}", u.name)
    }
}

/// Add the recipe's users. Returns (name, uid, gid) of each, for tmpfiles entries.
pub fn add_users(root: &Path, users: &[User], epoch: u64) -> Result<Vec<(String, u32, u32)>, AccountError> {
    let mut passwd = Table::read(root, "/etc/passwd")?;
    let mut group = Table::read(root, "/etc/group")?;
    let mut shadow = Table::read(root, "/etc/shadow")?;
    let mut gshadow = Table::read(root, "/etc/gshadow")?;
    let day = (epoch / 86400).to_string();
    let mut created = Vec::new();

    for (i, u) in users.iter().enumerate() {
        let hash = u.password_hash.clone().unwrap_or_else(|| "!".into());
        if u.name == "root" {
            if let Some(s) = shadow.find_mut("root") {
                s[1] = hash;
                s[2] = day.clone();
            }
            created.push(("root".into(), 0, 0));
            continue;
        }
        if passwd.find(&u.name).is_some() {
            return Err(AccountError::Exists(u.name.clone()));
        }
        let uid = u.uid.unwrap_or(1000 + i as u32);
        if let Some(owner) = passwd.id_owner(uid) {
            return Err(AccountError::UidTaken { user: u.name.clone(), uid, owner: owner.to_string() });
        }
        let gid = if group.id_owner(uid).is_none() && group.find(&u.name).is_none() {
            group.lines.push(vec![u.name.clone(), "x".into(), uid.to_string(), String::new()]);
            gshadow.lines.push(vec![u.name.clone(), "!".into(), String::new(), String::new()]);
            uid
        } else {
            100 // "users"
        };
        passwd.lines.push(vec![
            u.name.clone(),
            "x".into(),
            uid.to_string(),
            gid.to_string(),
            u.name.clone(),
            home_of(u),
            u.shell.clone(),
        ]);
        shadow.lines.push(vec![
            u.name.clone(),
            hash,
            day.clone(),
            "0".into(),
            "99999".into(),
            "7".into(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        for g in &u.groups {
            let Some(line) = group.find_mut(g) else {
                return Err(AccountError::UnknownGroup { user: u.name.clone(), group: g.clone() });
            };
            append_member(&mut line[3], &u.name);
            if let Some(gs) = gshadow.find_mut(g) {
                if gs.len() >= 4 {
                    append_member(&mut gs[3], &u.name);
                }
            }
        }
        created.push((u.name.clone(), uid, gid));
    }

    passwd.write(root, "/etc/passwd", 0o644)?;
    group.write(root, "/etc/group", 0o644)?;
    shadow.write(root, "/etc/shadow", 0o640)?;
    gshadow.write(root, "/etc/gshadow", 0o640)?;
    // shadow and gshadow belong to group `shadow` in Debian.
    if let Some(g) = group.find("shadow").and_then(|l| l[2].parse::<u32>().ok()) {
        for f in ["/etc/shadow", "/etc/gshadow"] {
            std::os::unix::fs::chown(in_root(root, f), Some(0), Some(g))?;
        }
    }

    // Authorized keys live in /etc (read-only, part of the image), not in the home
    // directories on /data, so a release can rotate them.
    for u in users {
        if u.ssh_authorized_keys.is_empty() {
            continue;
        }
        let mut s = u.ssh_authorized_keys.join("\n");
        s.push('\n');
        write_file(root, &format!("/etc/ssh/authorized_keys/{}", u.name), s, 0o644)?;
    }
    Ok(created)
}

fn append_member(field: &mut String, name: &str) {
    if field.split(',').any(|m| m == name) {
        return;
    }
    if !field.is_empty() {
        field.push(',');
    }
    field.push_str(name);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            uid: None,
            groups: vec!["adm".into()],
            shell: "/bin/bash".into(),
            password_hash: None,
            ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3 test".into()],
        }
    }

    fn base(root: &Path) {
        write_file(root, "/etc/passwd", "root:x:0:0:root:/root:/bin/bash\n", 0o644).unwrap();
        write_file(root, "/etc/group", "root:x:0:\nadm:x:4:\nusers:x:100:\n", 0o644).unwrap();
        write_file(root, "/etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640).unwrap();
        write_file(root, "/etc/gshadow", "root:*::\nadm:*::\n", 0o640).unwrap();
    }

    #[test]
    fn adds_user_group_and_keys() {
        let d = tempfile::tempdir().unwrap();
        base(d.path());
        let made = add_users(d.path(), &[user("admin")], 1_700_000_000).unwrap();
        assert_eq!(made, vec![("admin".to_string(), 1000, 1000)]);
        let passwd = fs::read_to_string(d.path().join("etc/passwd")).unwrap();
        assert!(passwd.contains("admin:x:1000:1000:admin:/home/admin:/bin/bash"), "{passwd}");
        let group = fs::read_to_string(d.path().join("etc/group")).unwrap();
        assert!(group.contains("adm:x:4:admin") && group.contains("admin:x:1000:"), "{group}");
        let shadow = fs::read_to_string(d.path().join("etc/shadow")).unwrap();
        assert!(shadow.contains("admin:!:19675:"), "locked, day from epoch: {shadow}");
        let keys = fs::read_to_string(d.path().join("etc/ssh/authorized_keys/admin")).unwrap();
        assert_eq!(keys, "ssh-ed25519 AAAAC3 test\n");
    }

    #[test]
    fn unknown_group_and_duplicate_are_errors() {
        let d = tempfile::tempdir().unwrap();
        base(d.path());
        let mut u = user("admin");
        u.groups = vec!["wheel".into()];
        assert!(matches!(add_users(d.path(), &[u], 0), Err(AccountError::UnknownGroup { .. })));
        let mut u = user("x");
        u.uid = Some(0);
        assert!(matches!(add_users(d.path(), &[u], 0), Err(AccountError::UidTaken { .. })));
    }
}

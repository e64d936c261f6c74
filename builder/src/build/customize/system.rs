//! The read-only-root plumbing: mounts, /var on the data partition, machine-id, journal,
//! network, SSH host keys, growing /data. Each function writes plain files into the tree.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::fsutil::{in_root, remove, write_file, write_symlink};

/// Where the image keeps the pristine copy of its /var (tmpfiles copies from here).
pub const FACTORY_VAR: &str = "/usr/share/factory/var";

pub fn fstab(root: &Path) -> io::Result<()> {
    write_file(
        root,
        "/etc/fstab",
        "# Written by edgeimg. The root filesystem is the dm-verity device /dev/mapper/root,\n\
         # set up by the initrd from the kernel command line; it is read-only by design.\n\
         # <what>          <where> <type> <options>                                     <dump> <pass>\n\
         PARTLABEL=esp     /efi    vfat   umask=0077,noexec,nosuid,nodev,flush           0      2\n\
         # /data is mounted by the initrd so that /etc/machine-id (a link into it) is there\n\
         # before systemd starts.\n\
         PARTLABEL=data    /data   ext4   defaults,noatime,x-initrd.mount                0      2\n\
         /data/var         /var    none   bind,x-systemd.requires-mounts-for=/data       0      0\n",
        0o644,
    )
}

/// /etc/machine-id is an empty file in the image; the initrd (edgeimg dracut module)
/// bind-mounts this device's id from /data over it before systemd starts. K3s and the
/// journal need it stable; a read-only root would otherwise get a new one every boot.
/// (A symlink into /data does not work: systemd never commits an id through it.)
pub fn machine_id(root: &Path) -> io::Result<()> {
    write_file(root, "/etc/machine-id", "", 0o444)?;
    write_symlink(root, "/var/lib/dbus/machine-id", "/etc/machine-id")
}

/// Generators that make no sense on a device.
pub fn generators(root: &Path) -> io::Result<()> {
    // systemd-ssh-generator probes AF_VSOCK at every boot (loading the Hyper-V and VMware
    // vsock modules) to offer sshd over vsock to a hypervisor; edge devices have none.
    write_symlink(root, "/etc/systemd/system-generators/systemd-ssh-generator", "/dev/null")
}

/// Move the image's /var to the factory directory and describe it as tmpfiles.d lines so
/// that the persistent /var on /data is populated on the first boot, and entries that a
/// new release adds appear after an update. /var/lib/dpkg always shows the running image.
pub fn var_to_factory(root: &Path) -> io::Result<()> {
    let var = in_root(root, "/var");
    let factory = in_root(root, FACTORY_VAR);
    remove(root, FACTORY_VAR)?;
    fs::create_dir_all(factory.parent().unwrap_or(Path::new("/")))?;
    fs::rename(&var, &factory)?;
    fs::create_dir(&var)?;

    let mut lines = vec![
        "# Written by edgeimg: populate the persistent /var (on /data) from the image.".to_string(),
        "# C copies only what is missing, so device state is never overwritten.".to_string(),
    ];
    let mut top: Vec<_> = fs::read_dir(&factory)?.collect::<Result<_, _>>()?;
    top.sort_by_key(|e| e.file_name());
    for e in top {
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = e.path().symlink_metadata()?;
        let path = format!("/var/{name}");
        if meta.file_type().is_symlink() {
            let target = fs::read_link(e.path())?;
            lines.push(format!("L {path} - - - - {}", target.display()));
        } else if meta.is_dir() {
            lines.push(format!("d {path} {:04o} {} {} -", meta.mode() & 0o7777, meta.uid(), meta.gid()));
            let mut sub: Vec<_> = fs::read_dir(e.path())?.collect::<Result<_, _>>()?;
            sub.sort_by_key(|e| e.file_name());
            for s in sub {
                let sname = s.file_name().to_string_lossy().into_owned();
                let spath = format!("{path}/{sname}");
                if spath == "/var/lib/dpkg" {
                    lines.push(format!("L+ {spath} - - - - {FACTORY_VAR}/lib/dpkg"));
                } else {
                    lines.push(format!("C {spath} - - - - {FACTORY_VAR}/{name}/{sname}"));
                }
            }
        } else {
            lines.push(format!("C {path} - - - - {FACTORY_VAR}/{name}"));
        }
    }
    lines.push(String::new());
    write_file(root, "/usr/lib/tmpfiles.d/00-edgeimg-var.conf", lines.join("\n"), 0o644)
}

/// Home directories live under /var/home (so on /data); /root likewise.
pub fn homes(root: &Path, users: &[(String, u32, u32)]) -> io::Result<()> {
    remove(root, "/home")?;
    write_symlink(root, "/home", "var/home")?;
    remove(root, "/root")?;
    write_symlink(root, "/root", "var/roothome")?;
    let mut t = String::from(
        "# Written by edgeimg: home directories on the data partition.\n\
         d /var/home 0755 root root -\n\
         C /var/roothome - - - - /etc/skel\n\
         Z /var/roothome 0700 root root -\n",
    );
    for (name, uid, gid) in users.iter().filter(|(n, _, _)| n != "root") {
        t.push_str(&format!("C /var/home/{name} - - - - /etc/skel\nZ /var/home/{name} 0700 {uid} {gid} -\n"));
    }
    write_file(root, "/usr/lib/tmpfiles.d/01-edgeimg-home.conf", t, 0o644)
}

pub fn journal(root: &Path, persistent: bool, max_use: &str) -> io::Result<()> {
    let storage = if persistent { "persistent" } else { "volatile" };
    write_file(
        root,
        "/etc/systemd/journald.conf.d/50-edgeimg.conf",
        format!("# Written by edgeimg.\n[Journal]\nStorage={storage}\nSystemMaxUse={max_use}\n"),
        0o644,
    )?;
    if persistent {
        // Part of /var, so it moves into the factory copy and tmpfiles recreates it.
        fs::create_dir_all(in_root(root, "/var/log/journal"))?;
    }
    Ok(())
}

/// DHCP on every wired interface with systemd-networkd; resolved for DNS when installed.
pub fn network(root: &Path) -> io::Result<()> {
    write_file(
        root,
        "/etc/systemd/network/80-edgeimg-wired.network",
        "# Written by edgeimg: DHCP on every wired interface. Override with a file of the\n\
         # same name in an overlay, or add lower-numbered .network files.\n\
         [Match]\nType=ether\n\n[Network]\nDHCP=yes\nLinkLocalAddressing=ipv6\n\n[DHCPv4]\nUseDomains=yes\n",
        0o644,
    )?;
    if in_root(root, "/usr/lib/systemd/systemd-resolved").exists() {
        write_symlink(root, "/etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf")?;
    }
    Ok(())
}

/// SSH: keys from /etc/ssh/authorized_keys/<user>, no passwords, and per-device host keys
/// generated on the first boot into /var (never baked into the image).
pub fn ssh(root: &Path) -> io::Result<bool> {
    if !in_root(root, "/usr/sbin/sshd").exists() {
        return Ok(false);
    }
    for e in fs::read_dir(in_root(root, "/etc/ssh"))? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with("ssh_host_") {
            fs::remove_file(e.path())?;
        }
    }
    write_file(
        root,
        "/etc/ssh/sshd_config.d/50-edgeimg.conf",
        "# Written by edgeimg.\n\
         AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys/%u\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         HostKey /var/lib/ssh/ssh_host_ed25519_key\n\
         HostKey /var/lib/ssh/ssh_host_ecdsa_key\n\
         HostKey /var/lib/ssh/ssh_host_rsa_key\n",
        0o644,
    )?;
    write_file(
        root,
        "/usr/lib/systemd/system/edgeimg-ssh-hostkeys.service",
        "[Unit]\n\
         Description=Generate this device's SSH host keys\n\
         Before=ssh.service sshd.service\n\
         ConditionPathExists=!/var/lib/ssh/ssh_host_ed25519_key\n\
         RequiresMountsFor=/var/lib\n\n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/usr/bin/install -d -m 0700 /var/lib/ssh\n\
         ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N \"\" -f /var/lib/ssh/ssh_host_ed25519_key\n\
         ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N \"\" -f /var/lib/ssh/ssh_host_ecdsa_key\n\
         ExecStart=/usr/bin/ssh-keygen -q -t rsa -b 3072 -N \"\" -f /var/lib/ssh/ssh_host_rsa_key\n\n\
         [Install]\n\
         WantedBy=ssh.service\n",
        0o644,
    )?;
    Ok(true)
}

/// Grow the data partition (systemd-repart) and its filesystem (systemd-growfs) to the end
/// of the medium. Runs every boot; a no-op when there is no free space after /data.
///
/// Stock systemd-repart.service cannot be used: it looks for the disk behind `/`, and a
/// dm-verity root has two backing devices, so it gives up.
pub fn grow_data(root: &Path) -> io::Result<()> {
    write_file(
        root,
        "/usr/lib/edgeimg/repart.d/50-data.conf",
        "# The data partition takes all free space after it.\n[Partition]\nType=linux-generic\nLabel=data\n",
        0o644,
    )?;
    write_file(
        root,
        "/usr/lib/edgeimg/grow-data",
        "#!/bin/sh\n\
         # Grow the data partition and its ext4 filesystem to the end of the disk.\n\
         set -eu\n\
         part=$(readlink -f /dev/disk/by-partlabel/data)\n\
         disk=/dev/$(basename \"$(readlink -f \"/sys/class/block/$(basename \"$part\")/..\")\")\n\
         systemd-repart --dry-run=no --no-pager --definitions=/usr/lib/edgeimg/repart.d \"$disk\"\n\
         exec /usr/lib/systemd/systemd-growfs /data\n",
        0o755,
    )?;
    write_file(
        root,
        "/usr/lib/systemd/system/edgeimg-grow-data.service",
        "[Unit]\n\
         Description=Grow the data partition to the end of the disk\n\
         DefaultDependencies=no\n\
         RequiresMountsFor=/data\n\
         Before=local-fs.target shutdown.target\n\
         Conflicts=shutdown.target\n\n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/usr/lib/edgeimg/grow-data\n\n\
         [Install]\n\
         WantedBy=local-fs.target\n",
        0o644,
    )
}

/// Timers and services that make no sense on an image-based OS (no apt upgrades, no dpkg
/// database backups) and the interactive first-boot wizard, which would wait on the
/// console of a headless device forever.
pub const MASKED_BY_DEFAULT: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "apt-daily.service",
    "apt-daily-upgrade.service",
    "dpkg-db-backup.timer",
    "systemd-firstboot.service",
    "systemd-machine-id-commit.service",
    // The updater's health step commits trial boots itself (with the guard against a stale
    // LoaderBootCountPath), after its checks pass.
    "systemd-bless-boot.service",
];

/// The device agent: `/usr/bin/edgeimg-updater`, its configuration and trusted root, the
/// update, health and provisioning services, and the clock floor (the system clock never
/// starts before this release was built: K3s certificates and TUF expiry checks need a
/// sane clock on boards without an RTC). Returns the sha256 of the installed updater.
pub fn device_agent(
    root: &Path,
    updater: &Path,
    epoch: u64,
    config: &str,
    trusted_root: Option<&[u8]>,
    health_timeout: u64,
) -> io::Result<String> {
    let bin = fs::read(updater)
        .map_err(|e| io::Error::new(e.kind(), format!("reading the device updater {}: {e}", updater.display())))?;
    write_file(root, "/usr/bin/edgeimg-updater", &bin, 0o755)?;
    write_file(
        root,
        "/usr/lib/systemd/system/edgeimg-provision.service",
        "# Written by edgeimg.\n\
         [Unit]\n\
         Description=Apply this device's provisioning file (hostname, cluster join)\n\
         DefaultDependencies=no\n\
         RequiresMountsFor=/data /efi /var/lib\n\
         After=local-fs.target\n\
         Before=sysinit.target network-pre.target shutdown.target\n\
         Wants=network-pre.target\n\
         Conflicts=shutdown.target\n\n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/usr/bin/edgeimg-updater provision --boot-dir /efi\n\n\
         [Install]\n\
         WantedBy=sysinit.target\n",
        0o644,
    )?;
    write_file(root, "/usr/lib/edgeimg/updater.toml", config, 0o644)?;
    if let Some(r) = trusted_root {
        write_file(root, "/usr/lib/edgeimg/root.json", r, 0o644)?;
    }
    write_file(
        root,
        "/usr/lib/systemd/system/edgeimg-updater.service",
        "# Written by edgeimg.\n\
         [Unit]\n\
         Description=edgeimg updater: A/B updates through TUF\n\
         Wants=network-online.target\n\
         After=network-online.target boot-complete.target edgeimg-health.service\n\
         RequiresMountsFor=/data\n\n\
         [Service]\n\
         Type=notify\n\
         ExecStart=/usr/bin/edgeimg-updater run\n\
         Restart=always\n\
         RestartSec=30s\n\
         WatchdogSec=15min\n\n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        0o644,
    )?;
    // A trial boot is committed only when the health checks pass; if they fail or hang,
    // systemd reboots and the loader falls back to the other slot.
    write_file(
        root,
        "/usr/lib/systemd/system/edgeimg-health.service",
        format!(
            "# Written by edgeimg.\n\
             [Unit]\n\
             Description=edgeimg: check this boot; commit a trial boot or give it up\n\
             # Runs on every boot (results go into the reports). No default dependencies: it\n\
             # may wait minutes for K3s, and multi-user.target must not wait for it.\n\
             DefaultDependencies=no\n\
             Requires=sysinit.target\n\
             Wants=network-online.target\n\
             After=basic.target network-online.target time-set.target k3s.service edgeimg-k3s-prepare.service\n\
             Before=boot-complete.target shutdown.target\n\
             Conflicts=shutdown.target\n\
             RequiresMountsFor=/data /efi\n\n\
             [Service]\n\
             Type=oneshot\n\
             RemainAfterExit=yes\n\
             ExecStart=/usr/bin/edgeimg-updater health\n\
             TimeoutStartSec={health_timeout}\n\
             FailureAction=reboot\n\n\
             [Install]\n\
             WantedBy=multi-user.target\n\
             RequiredBy=boot-complete.target\n"
        ),
        0o644,
    )?;
    // systemd moves the clock forward to this file's mtime at boot (erofs -T sets it).
    write_file(root, "/usr/lib/clock-epoch", format!("{epoch}\n"), 0o644)?;
    Ok(crate::fsutil::sha256_bytes(&bin))
}

/// The TPM side of the device agent: edgeimg-tpm (which links the TCG software stack, so
/// that the updater itself does not) and the unit that measures the booted release into
/// PCR 15 once per boot, after the TPM is up and before the network is.
pub fn tpm(root: &Path, tool: &Path) -> io::Result<()> {
    let bin =
        fs::read(tool).map_err(|e| io::Error::new(e.kind(), format!("reading edgeimg-tpm {}: {e}", tool.display())))?;
    write_file(root, "/usr/lib/edgeimg/edgeimg-tpm", &bin, 0o755)?;
    write_file(
        root,
        "/usr/lib/systemd/system/edgeimg-measure.service",
        "# Written by edgeimg.\n\
         [Unit]\n\
         Description=edgeimg: measure the booted release into TPM PCR 15\n\
         # tpm2.target is reached once the firmware's TPM is usable (at once without one).\n\
         DefaultDependencies=no\n\
         Wants=tpm2.target network-pre.target\n\
         After=tpm2.target local-fs.target\n\
         Before=network-pre.target sysinit.target shutdown.target\n\
         Conflicts=shutdown.target\n\
         RequiresMountsFor=/data\n\n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/usr/bin/edgeimg-updater measure\n\n\
         [Install]\n\
         WantedBy=sysinit.target\n",
        0o644,
    )
}

/// Services edgeimg itself needs enabled.
pub fn default_enabled(root: &Path, ssh: bool) -> Vec<&'static str> {
    let mut v = vec![
        "systemd-networkd.service",
        "edgeimg-grow-data.service",
        "edgeimg-provision.service",
        "edgeimg-updater.service",
        "edgeimg-health.service",
    ];
    if in_root(root, "/usr/lib/systemd/system/systemd-resolved.service").exists() {
        v.push("systemd-resolved.service");
    }
    if in_root(root, "/usr/lib/systemd/system/systemd-timesyncd.service").exists() {
        v.push("systemd-timesyncd.service");
    }
    if ssh {
        v.push("edgeimg-ssh-hostkeys.service");
    }
    if in_root(root, "/usr/lib/systemd/system/edgeimg-measure.service").exists() {
        v.push("edgeimg-measure.service");
    }
    v
}

/// L4T boards: NVIDIA's `nv-l4t-bootloader-config.service` clears the firmware's rootfs
/// retry count once Linux runs, which would make any slot that reaches userspace stick,
/// even one that then hangs before its health checks pass. On a trial boot it waits: the
/// condition skips it, and the updater starts it after the commit (edgeimg_proto::l4t).
pub fn l4t_retry_hold(root: &Path) -> io::Result<()> {
    use edgeimg_proto::l4t::RETRY_SERVICE;
    write_file(
        root,
        &format!("/usr/lib/systemd/system/{RETRY_SERVICE}.d/edgeimg-trial.conf"),
        "# Written by edgeimg: on a trial boot, L4T's retry count is cleared only after the health\n\
         # checks pass (edgeimg-updater starts this unit when it commits the slot). Until then a\n\
         # hang or reset counts as a failed try, and the firmware falls back after its tries.\n\
         [Unit]\n\
         RequiresMountsFor=/efi\n\n\
         [Service]\n\
         ExecCondition=/usr/bin/edgeimg-updater committed\n",
        0o644,
    )
}

/// U-Boot boards: where `fw_printenv`/`fw_setenv` find the two copies of the boot state on
/// the boot partition (mounted at /efi), and the state they fall back to when a copy fails
/// its CRC (`/etc/u-boot-initial-env`, libubootenv's default). `/etc/fw_env.config` names
/// the first copy, so a plain `fw_printenv` shows what U-Boot reads; the updater writes
/// both (edgeimg_proto::uboot).
pub fn uboot_env(root: &Path, tries: u32) -> io::Result<()> {
    use edgeimg_proto::uboot::{BootState, ENV_FILE, ENV_REDUND_FILE, ENV_SIZE};
    let config = |file: &str, note: &str| {
        format!(
            "# Written by edgeimg: {note}\n# device or file   offset   size\n/efi/{file}   0x0000   {ENV_SIZE:#06x}\n"
        )
    };
    write_file(root, "/etc/fw_env.config", config(ENV_FILE, "the boot state U-Boot reads first."), 0o644)?;
    write_file(
        root,
        "/usr/lib/edgeimg/fw_env.redund.config",
        config(ENV_REDUND_FILE, "the second copy of the boot state (read when the first fails its CRC)."),
        0o644,
    )?;
    write_file(root, "/etc/u-boot-initial-env", BootState::committed(edgeimg_proto::Slot::A, tries).to_text(), 0o644)
}

//! The updater configuration the builder bakes into images is what the updater reads.

use edgeimg::config::updater::Updater;

#[test]
fn rendered_config_loads_in_the_updater() {
    let u: Updater = toml::from_str(
        r#"
server = "http://10.0.2.100:8080"
root = "root.json"
channel = "canary"
poll_interval = "15m"
time = "system"
reboot = "manual"
reboot_window = "02:00-04:00"
rate_limit = 1000000
drain = true
health_deadline = "90s"
k3s_node_ready = false
health_units = ["ssh.service", "a \"quoted\" unit"]
health_http = ["http://127.0.0.1:8080/healthz"]
health_commands = [["/usr/bin/test", "-e", "/run/ok"]]
metrics = "127.0.0.1:9101"
"#,
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("usr/lib/edgeimg/updater.toml");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, u.render("qemu-x86_64", "systemd-boot", 2)).unwrap();
    let s = edgeimg_updater::config::load(d.path(), None).unwrap();
    assert_eq!(s.server.as_deref(), Some("http://10.0.2.100:8080"));
    assert_eq!(s.repository.as_deref(), Some("http://10.0.2.100:8080/tuf"));
    assert_eq!(s.board, "qemu-x86_64");
    assert_eq!(s.channel, "canary");
    assert_eq!(s.poll_interval.as_secs(), 900);
    assert_eq!(s.tries, 2);
    assert_eq!(s.backend, edgeimg_updater::config::BootBackendKind::SystemdBoot);
    assert!(s.drain);
    assert_eq!(s.reboot_policy, edgeimg_updater::config::RebootPolicy::Manual);
    assert_eq!(s.reboot_window, Some((120, 240)));
    assert_eq!(s.health_units, vec!["ssh.service".to_string(), "a \"quoted\" unit".to_string()]);
    assert_eq!(s.health_commands, vec![vec!["/usr/bin/test".to_string(), "-e".into(), "/run/ok".into()]]);
    assert_eq!(s.k3s_node_ready, Some(false));
    assert_eq!(s.metrics_listen, Some("127.0.0.1:9101".parse().unwrap()));
    // The defaults an image without [updater] gets also load.
    std::fs::write(&f, Updater::default().render("qemu-arm64", "u-boot", 1)).unwrap();
    let s = edgeimg_updater::config::load(d.path(), None).unwrap();
    assert_eq!(s.backend, edgeimg_updater::config::BootBackendKind::UBoot);
    assert_eq!(s.fw_env_config[0], d.path().join("etc/fw_env.config"));
    assert_eq!(s.server, None);
    assert_eq!(s.channel, "stable");
    assert_eq!(s.metrics_listen, None, "metrics are off unless configured");
}

#[test]
fn https_server_without_ca_certificates_is_refused() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("root.json"), "{}").unwrap();
    let recipe = |packages: &str| {
        format!(
            "[image]\nname = \"x\"\nversion = \"1.0.0\"\n[debian]\npackages = [{packages}]\n\
             [updater]\nserver = \"https://updates.example.com\"\nroot = \"root.json\"\n"
        )
    };
    let p = d.path().join("r.toml");
    std::fs::write(&p, recipe("")).unwrap();
    let e = edgeimg::config::load_recipe(&p).unwrap_err().to_string();
    assert!(e.contains("updater.server") && e.contains("ca-certificates"), "{e}");
    std::fs::write(&p, recipe("\"ca-certificates\"")).unwrap();
    edgeimg::config::load_recipe(&p).unwrap();
}

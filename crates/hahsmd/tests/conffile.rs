//! The packaged conffile, packaging/hahsmd.toml, stays true to config.rs: it
//! loads as shipped, it names every option, and every commented-out
//! "#name = value" line shows the option's real default.
use hahsmd::config::{AlertTargets, Config, Limits, DEFAULT_METRICS_LISTEN};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn conffile() -> String {
    std::fs::read_to_string(repo().join("packaging/hahsmd.toml")).expect("packaging/hahsmd.toml")
}

/// A commented-out setting or table header: "#name = …", "#\"key\" = …", "#[table]".
fn setting(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('#')?;
    let first = rest.chars().next()?;
    (first.is_ascii_lowercase() || first == '"' || first == '[').then_some(rest)
}

/// The conffile with every commented-out setting switched on.
fn uncommented() -> String {
    conffile()
        .lines()
        .map(|l| setting(l).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

fn load(text: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hahsmd.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap_or_else(|e| panic!("{e:#}\n{text}"))
}

#[test]
fn the_conffile_loads_as_shipped_with_the_packaged_paths() {
    let config = load(&conffile());
    // StateDirectory=hahsm in packaging/hahsmd.service.
    assert_eq!(config.data_dir, Path::new("/var/lib/hahsm"));
    // Where `hahsm appliance` looks by default (--data-dir /var/lib/hahsm).
    assert_eq!(config.admin_socket(), Path::new("/var/lib/hahsm/admin.sock"));
    let unit = std::fs::read_to_string(repo().join("packaging/hahsmd.service")).unwrap();
    assert!(unit.contains("\nStateDirectory=hahsm\n"), "{unit}");
    assert!(
        unit.contains("\nExecStart=/usr/sbin/hahsmd --config /etc/hahsm/hahsmd.toml\n"),
        "{unit}"
    );
}

#[test]
fn the_conffile_names_every_option_of_config_rs() {
    let source = std::fs::read_to_string(repo().join("crates/hahsmd/src/config.rs")).unwrap();
    let text = conffile();
    let mut fields = 0;
    // The structs the TOML file is read into (others in config.rs are not options).
    let options = ["Config", "Limits", "Monitoring", "AlertTargets"];
    let mut in_options = false;
    for line in source.lines() {
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let name = rest.split(|c: char| !c.is_alphanumeric()).next().unwrap_or("");
            in_options = options.contains(&name);
            continue;
        }
        if line.starts_with('}') {
            in_options = false;
        }
        if !in_options {
            continue;
        }
        // Their fields: "    pub name: Type,".
        let Some(rest) = line.strip_prefix("    pub ") else {
            continue;
        };
        let Some((name, _)) = rest.split_once(':') else {
            continue;
        };
        if name.contains(' ') || name.contains('(') {
            continue;
        }
        fields += 1;
        let named = text.lines().any(|l| {
            let l = setting(l).unwrap_or(l);
            l.starts_with(&format!("{name} = "))
                || l == format!("[{name}]")
                || l.ends_with(&format!(".{name}]"))
        });
        assert!(
            named,
            "packaging/hahsmd.toml does not name the option '{name}' of config.rs"
        );
    }
    assert!(fields >= 20, "found only {fields} options in config.rs");
}

#[test]
fn every_commented_default_is_the_real_default() {
    // Every line switched on still loads (names and types are right)...
    let all = load(&uncommented());
    // ...and, but for the examples of options without a default, gives the defaults.
    assert_eq!(format!("{:?}", all.limits), format!("{:?}", Limits::default()));
    assert_eq!(all.monitoring.metrics_listen, DEFAULT_METRICS_LISTEN);
    let shipped = load(&conffile());
    assert_eq!(
        all.monitoring.out_of_sync_after_secs,
        shipped.monitoring.out_of_sync_after_secs
    );
    assert_eq!(
        all.monitoring.policy_drift_after_secs,
        shipped.monitoring.policy_drift_after_secs
    );
    let defaults = AlertTargets::default();
    let alerts = &all.monitoring.alerts;
    assert_eq!(
        (
            alerts.retries,
            alerts.retry_backoff_ms,
            alerts.timeout_ms,
            alerts.alertmanager_resend_secs
        ),
        (
            defaults.retries,
            defaults.retry_backoff_ms,
            defaults.timeout_ms,
            defaults.alertmanager_resend_secs
        )
    );
    // The shipped file itself sets nothing but the paths and the listen address.
    assert_eq!(
        format!("{:?}", shipped.limits),
        format!("{:?}", Limits::default())
    );
    assert!(shipped.peer_listen.is_none() && shipped.peer_routes.is_empty());
    assert!(shipped.monitoring.alerts.exec.is_empty() && shipped.monitoring.alerts.webhook.is_none());
    assert!(shipped.monitoring.alerts.alertmanager.is_none());
    // The examples are examples: they show the option's syntax.
    assert!(all.peer_listen.is_some() && !all.peer_routes.is_empty());
    assert!(!alerts.exec.is_empty() && alerts.webhook.is_some() && alerts.alertmanager.is_some());
}

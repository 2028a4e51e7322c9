//! The daemon's TOML configuration.
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the store, the certificate and the sealed activation file live.
    pub data_dir: PathBuf,
    /// The client link's listen address, e.g. "127.0.0.1:1792".
    pub listen: String,
    /// The peer listener for replication between the members of an HA group,
    /// e.g. "127.0.0.1:1793". Without it the member cannot join a group.
    pub peer_listen: Option<String>,
    /// Addresses to reach peers by, by member serial, where the address a peer
    /// advertises is not the one this member must use (NAT, or a fault-
    /// injecting proxy in tests).
    #[serde(default)]
    pub peer_routes: std::collections::BTreeMap<String, String>,
    /// The address (an IP address or a DNS name, no port) that the other
    /// members and the clients reach this member by, with the ports of
    /// `listen` and `peer_listen`. Needed when a listener binds every address
    /// (0.0.0.0 or ::), which no one else can dial; `hahsmd
    /// --advertise-address` (or HAHSMD_ADVERTISE_ADDRESS) overrides it.
    pub advertise_address: Option<String>,
    /// The admin socket; `<data_dir>/admin.sock` by default.
    pub admin_socket: Option<PathBuf>,
    /// `text` (the default) or `json`: one JSON object a line, with the
    /// fields tracing records, for a log shipper.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Where the log goes: a file, appended to; standard error (for
    /// journald) when unset. SIGHUP opens it again (for logrotate).
    pub log_file: Option<PathBuf>,
    /// The least level logged: `error`, `warn`, `info` (the default),
    /// `debug` or `trace`, or a tracing filter. `RUST_LOG` overrides it at
    /// start; SIGHUP applies the config's value.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub monitoring: Monitoring,
    #[serde(default)]
    pub replication: Replication,
}

fn default_log_level() -> String {
    "info".into()
}

/// How the log is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Metrics and alerts (`[monitoring]`); see docs/operator-guide.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Monitoring {
    /// The metrics endpoint's address; localhost by default. Port 0 picks a
    /// free port, written to `<data_dir>/metrics.addr`. Empty turns it off.
    pub metrics_listen: String,
    /// How long the group may stay out of sync before the out-of-sync alert.
    pub out_of_sync_after_secs: u64,
    /// How long policies may differ before the policy-drift alert (a
    /// moment's grace while `ha sync-policies` goes round the members).
    pub policy_drift_after_secs: u64,
    #[serde(default)]
    pub alerts: AlertTargets,
}

impl Default for Monitoring {
    fn default() -> Self {
        Monitoring {
            metrics_listen: DEFAULT_METRICS_LISTEN.to_string(),
            out_of_sync_after_secs: 10,
            policy_drift_after_secs: 3,
            alerts: AlertTargets::default(),
        }
    }
}

pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9792";

/// How often, by default, the alerts still firing are sent again to
/// Alertmanager: well within its `resolve_timeout` (5 min by default), after
/// which it forgets an alert that was not sent again.
pub const DEFAULT_ALERTMANAGER_RESEND_SECS: u64 = 60;

/// Where alerts go (`[monitoring.alerts]`): a command, a webhook, an
/// Alertmanager, or any of them together.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertTargets {
    /// A program and its arguments, run without a shell for each alert, with
    /// the alert in `HAHSM_ALERT_*` variables and as JSON on its stdin.
    pub exec: Vec<String>,
    /// An `http://` URL that each alert is POSTed to as JSON.
    pub webhook: Option<String>,
    /// An Alertmanager's `http://` URL (with its route prefix, if it has
    /// one): alerts are POSTed to its v2 API, `<url>/api/v2/alerts`.
    pub alertmanager: Option<String>,
    /// How often the alerts still firing are sent to the Alertmanager again,
    /// in seconds; keep it well below its `resolve_timeout`.
    pub alertmanager_resend_secs: u64,
    /// Further attempts after a failed delivery, with doubling back-off.
    pub retries: u32,
    /// The first back-off, in milliseconds.
    pub retry_backoff_ms: u64,
    /// How long one attempt may take (the command is killed after it).
    pub timeout_ms: u64,
}

impl Default for AlertTargets {
    fn default() -> Self {
        AlertTargets {
            exec: Vec::new(),
            webhook: None,
            alertmanager: None,
            alertmanager_resend_secs: DEFAULT_ALERTMANAGER_RESEND_SECS,
            retries: 5,
            retry_backoff_ms: 500,
            timeout_ms: 10_000,
        }
    }
}

/// The HA group's clock and lease rules (`[replication]`); see
/// docs/replication.md §7.1 and §8.1. Every member of a group should have
/// the same values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replication {
    /// The largest clock offset tolerated between members. A peer whose
    /// clock is further off is refused, and alerted; a member further off
    /// than that from a majority of its group takes no writes; no operation
    /// stamped further ahead than this of the member's clock is applied.
    pub max_clock_offset_ms: u64,
    /// Under the `quorum` write concern, a member that has not caught up
    /// with a majority of its group within this time serves no key
    /// operations: this is the bound after which a destroyed key signs no
    /// more anywhere, a member cut off from the majority included.
    pub quorum_lease_ms: u64,
    /// How long a silent peer holds the op log back. Operations every peer
    /// heard from within this time has applied are compacted away; a peer
    /// away for longer catches up from a snapshot of the partition when it
    /// returns. (A standalone partition compacts everything.)
    pub log_retention_ms: u64,
    /// Operations younger than this stay in the log, whatever the peers
    /// hold: a client's retry of a write finds its first result by its
    /// operation id there. Longer than any client's request timeout.
    pub compact_after_ms: u64,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            max_clock_offset_ms: 500,
            quorum_lease_ms: 4_000,
            log_retention_ms: 24 * 3600 * 1000,
            compact_after_ms: 600_000,
        }
    }
}

impl Replication {
    pub fn max_clock_offset(&self) -> Duration {
        Duration::from_millis(self.max_clock_offset_ms)
    }

    pub fn quorum_lease(&self) -> Duration {
        Duration::from_millis(self.quorum_lease_ms)
    }

    pub fn log_retention(&self) -> Duration {
        Duration::from_millis(self.log_retention_ms)
    }

    /// A lease shorter than two heartbeat rounds would lapse between them.
    fn validate(&self) -> Result<(), String> {
        if self.compact_after_ms < 1_000 {
            return Err(format!(
                "replication.compact_after_ms = {} is below 1000: a retried write must still find its first \
                 result in the log",
                self.compact_after_ms
            ));
        }
        if self.quorum_lease_ms < 2_000 {
            return Err(format!(
                "replication.quorum_lease_ms = {} is below 2000: the lease is renewed once a heartbeat \
                 (every second), so a shorter one lapses between renewals",
                self.quorum_lease_ms
            ));
        }
        Ok(())
    }
}

/// Limits that keep one client from taking the member down.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_frame_bytes: u32,
    /// Established (authenticated) client connections, in all.
    pub max_connections: usize,
    /// Established connections of one client certificate.
    pub max_connections_per_client: usize,
    /// Connections still in their TLS handshake or hello. When full, a new
    /// connection evicts the oldest, so idle or half-open connections cannot
    /// lock real clients out.
    pub max_pending_handshakes: usize,
    /// Requests one connection may have in flight at once.
    pub max_in_flight_per_connection: usize,
    pub handshake_timeout_ms: u64,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// The longest deadline a request may ask for.
    pub max_request_deadline_ms: u64,
    pub max_objects_per_partition: usize,
    pub max_template_attributes: usize,
    /// Parsed private and secret keys each activated partition keeps, the
    /// least recently used dropped first (`crate::key_cache`).
    pub key_cache_entries: usize,
    /// How long `hsm login` lasts on the admin socket.
    pub so_login_minutes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: hahsm_proto::DEFAULT_MAX_FRAME,
            max_connections: 1024,
            max_connections_per_client: 256,
            max_pending_handshakes: 256,
            max_in_flight_per_connection: 64,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 300_000,
            max_request_deadline_ms: 60_000,
            max_objects_per_partition: 1_000_000,
            max_template_attributes: 128,
            key_cache_entries: 10_000,
            so_login_minutes: 15,
        }
    }
}

impl Limits {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))?;
        validate_alerts(&config.monitoring.alerts)
            .map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))?;
        config
            .replication
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))?;
        if let Some(a) = &config.advertise_address {
            validate_advertise(a).map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))?;
        }
        Ok(config)
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.sock"))
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("hahsm.db")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.data_dir.join("server.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.data_dir.join("server.key")
    }

    /// Where the metrics endpoint writes the address it is bound to.
    pub fn metrics_addr_path(&self) -> PathBuf {
        self.data_dir.join("metrics.addr")
    }

    /// The host-local key that seals partition keys for auto-activation.
    pub fn seal_key_path(&self) -> PathBuf {
        self.data_dir.join("autoactivate.key")
    }
}

/// An `http://host:port/path` webhook target. HTTPS is not spoken here: use
/// the `exec` target with a client of your choice, or a local relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// host:port, for the TCP connection.
    pub authority: String,
    pub path: String,
}

impl WebhookUrl {
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        Self::parse_for("webhook", url)
    }

    /// The Alertmanager's v2 API for alerts, under the URL the config gives
    /// (its route prefix, if any): `<url>/api/v2/alerts`.
    pub fn alertmanager(url: &str) -> Result<WebhookUrl, String> {
        let mut u = Self::parse_for("alertmanager", url)?;
        if u.path.contains('?') || u.path.contains('#') {
            return Err(format!(
                "alertmanager '{}': a query or fragment in the URL",
                shown(url)
            ));
        }
        u.path = format!("{}/api/v2/alerts", u.path.trim_end_matches('/'));
        Ok(u)
    }

    fn parse_for(what: &str, url: &str) -> Result<WebhookUrl, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "{what} '{}': only http:// URLs are supported (use `exec` for anything else)",
                shown(url)
            )
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!(
                "{what} '{}': no host, or credentials in the URL",
                shown(url)
            ));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(WebhookUrl {
            authority,
            path: path.to_string(),
        })
    }
}

/// A target's URL as an error may repeat it: not at all if it may hold
/// credentials (`user:password@`), which must not reach a log.
fn shown(url: &str) -> &str {
    if url.contains('@') {
        "(not shown: it holds an @)"
    } else {
        url
    }
}

/// Checks the alert targets when the config is loaded.
fn validate_alerts(targets: &AlertTargets) -> Result<(), String> {
    if let Some(url) = &targets.webhook {
        WebhookUrl::parse(url)?;
    }
    if let Some(url) = &targets.alertmanager {
        WebhookUrl::alertmanager(url)?;
    }
    if targets.alertmanager_resend_secs == 0 {
        return Err("monitoring.alerts.alertmanager_resend_secs: at least 1".into());
    }
    if targets.exec.first().is_some_and(|p| p.is_empty()) {
        return Err("monitoring.alerts.exec: the program name is empty".into());
    }
    Ok(())
}

/// An advertised address is a host: an IP address or a DNS name, no port.
pub fn validate_advertise(host: &str) -> Result<(), String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return if bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified())
        {
            Err(format!("advertise_address {host} is no one's address"))
        } else {
            Ok(())
        };
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if name_ok {
        Ok(())
    } else {
        Err(format!(
            "advertise_address '{host}' is neither an IP address nor a host name (give no port)"
        ))
    }
}

/// The address others dial for a listener bound at `bound`: the advertised
/// host with the bound port, or the bound address itself, which must then be
/// a specific one.
pub fn advertised(bound: &str, advertise: Option<&str>, option: &str) -> Result<String, String> {
    let addr: std::net::SocketAddr = bound
        .parse()
        .map_err(|_| format!("the {option} listener's address {bound} is not an address"))?;
    match advertise {
        Some(host) if host.contains(':') && !host.starts_with('[') => Ok(format!("[{host}]:{}", addr.port())),
        Some(host) => Ok(format!("{host}:{}", addr.port())),
        None if addr.ip().is_unspecified() => Err(format!(
            "`{option}` binds every address ({bound}), which other members and clients cannot dial: \
             set `advertise_address` in the config (or hahsmd --advertise-address) to the address they reach this member by"
        )),
        None => Ok(bound.to_string()),
    }
}

#[cfg(test)]
mod advertise_tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_needs_an_advertised_address() {
        assert_eq!(
            advertised("10.0.1.21:1793", None, "peer_listen").unwrap(),
            "10.0.1.21:1793"
        );
        let e = advertised("0.0.0.0:1793", None, "peer_listen").unwrap_err();
        assert!(
            e.contains("advertise_address") && e.contains("peer_listen"),
            "{e}"
        );
        assert!(advertised("[::]:1792", None, "listen").is_err());
        assert_eq!(
            advertised("0.0.0.0:1793", Some("10.0.1.21"), "peer_listen").unwrap(),
            "10.0.1.21:1793"
        );
        assert_eq!(
            advertised("[::]:1792", Some("fd00::21"), "listen").unwrap(),
            "[fd00::21]:1792"
        );
        assert_eq!(
            advertised("0.0.0.0:1792", Some("hsmone.example.com"), "listen").unwrap(),
            "hsmone.example.com:1792"
        );
    }

    #[test]
    fn an_advertised_address_is_a_host_without_a_port() {
        for ok in [
            "10.0.1.21",
            "fd00::21",
            "[fd00::21]",
            "hsmone",
            "hsmone.example.com",
        ] {
            assert!(validate_advertise(ok).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.1.21:1793",
            "0.0.0.0",
            "::",
            "",
            "host name",
            "a..b",
            "http://x",
        ] {
            assert!(validate_advertise(bad).is_err(), "{bad}");
        }
    }
}

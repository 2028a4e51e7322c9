//! The client configuration file: the client's own certificate and key, and
//! the servers it trusts, each pinned by its certificate's SHA-256 fingerprint.
//! The CLI and the PKCS#11 module find it through `HAHSM_CONF`, or at
//! `~/.hahsm/client.toml`.
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const ENV_VAR: &str = "HAHSM_CONF";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The client's certificate (PEM), as registered on the members.
    pub cert: PathBuf,
    /// The client's private key (PEM), mode 0600.
    pub key: PathBuf,
    #[serde(default = "default_request_ms")]
    pub request_timeout_ms: u64,
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_connect_ms")]
    pub handshake_timeout_ms: u64,
    /// TCP keepalive on each connection to a member after this long idle
    /// (`hahsm_link::keep_alive`): a firewall that drops idle flows keeps the
    /// module's connections, and a dead one is found. 0 turns it off.
    #[serde(default = "default_keepalive_ms")]
    pub keepalive_ms: u64,
    /// Show only the HA slots in the PKCS#11 module, hiding the per-member slots.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ha_only: bool,
    #[serde(default, rename = "server")]
    pub servers: Vec<ServerEntry>,
}

/// The timeouts a config file that names none gets, and no paths or servers.
impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            request_timeout_ms: default_request_ms(),
            connect_timeout_ms: default_connect_ms(),
            handshake_timeout_ms: default_connect_ms(),
            keepalive_ms: default_keepalive_ms(),
            ha_only: false,
            servers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    pub name: String,
    /// host:port of the member's client link.
    pub address: String,
    /// SHA-256 fingerprint of the member's certificate, as `hahsm appliance sysconf fingerprint` prints it.
    pub fingerprint: String,
}

fn default_request_ms() -> u64 {
    10_000
}

fn default_connect_ms() -> u64 {
    3_000
}

/// Shorter than the idle timeouts of common firewalls and cloud load
/// balancers (minutes), long enough to cost nothing.
fn default_keepalive_ms() -> u64 {
    30_000
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the client config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the client config {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write the client config {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("no client config: set {ENV_VAR} or create {0}")]
    NotFound(PathBuf),
}

impl ClientConfig {
    /// `HAHSM_CONF` if set, else `~/.hahsm/client.toml`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os(ENV_VAR) {
            return PathBuf::from(p);
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        home.join(".hahsm").join("client.toml")
    }

    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::NotFound(path.to_path_buf())
            } else {
                ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks a config; `origin` names it in errors and anchors
    /// relative paths.
    pub fn parse(text: &str, origin: &Path) -> Result<ClientConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            message,
        };
        let mut config: ClientConfig = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let base = origin.parent().unwrap_or(Path::new("."));
        for p in [&mut config.cert, &mut config.key] {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
        for s in &config.servers {
            hahsm_link::Fingerprint::parse(&s.fingerprint)
                .map_err(|e| invalid(format!("server '{}': bad fingerprint: {e}", s.name)))?;
            if s.address.rsplit_once(':').is_none() {
                return Err(invalid(format!("server '{}': address must be host:port", s.name)));
            }
        }
        if config.request_timeout_ms == 0 {
            return Err(invalid("request_timeout_ms must be above 0".into()));
        }
        Ok(config)
    }

    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ConfigError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(path, text).map_err(|source| ConfigError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn server(&self, name: Option<&str>) -> Option<&ServerEntry> {
        match name {
            Some(n) => self.servers.iter().find(|s| s.name == n),
            None => self.servers.first(),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The idle time before keepalive probes, or `None` when turned off.
    pub fn keepalive(&self) -> Option<Duration> {
        (self.keepalive_ms > 0).then(|| Duration::from_millis(self.keepalive_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_anchored_at_the_config_file() {
        let text = "cert = \"c.pem\"\nkey = \"c.key\"\n[[server]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nfingerprint = \"\
                    00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\n";
        let c = ClientConfig::parse(text, Path::new("/etc/hahsm/client.toml")).unwrap();
        assert_eq!(c.cert, PathBuf::from("/etc/hahsm/c.pem"));
        assert_eq!(c.servers.len(), 1);
        assert_eq!(c.request_timeout_ms, 10_000);
    }

    #[test]
    fn a_bad_fingerprint_or_unknown_key_is_a_clear_error() {
        let bad_fp =
            "cert = \"c\"\nkey = \"k\"\n[[server]]\nname = \"a\"\naddress = \"h:1\"\nfingerprint = \"zz\"\n";
        let e = ClientConfig::parse(bad_fp, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("server 'a': bad fingerprint"), "{e}");
        let unknown = "cert = \"c\"\nkey = \"k\"\nbogus = 1\n";
        let e = ClientConfig::parse(unknown, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}

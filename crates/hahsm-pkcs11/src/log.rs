//! The module's log: one line per event, to the file named by
//! `HAHSM_PKCS11_LOG`, or else (warnings and errors only, unless
//! `HAHSM_PKCS11_DEBUG` is set) to stderr. It never receives PINs or key bytes: the
//! callers pass only names, codes and error messages built from `TokenError`
//! and `ClientError`, whose texts carry no secrets.
use hahsm_proto::halog::{HaEvent, HaRecord};
use std::io::Write;

pub const ENV_VAR: &str = "HAHSM_PKCS11_LOG";
/// Set to log every failed call with its reason (never with arguments).
pub const DEBUG_VAR: &str = "HAHSM_PKCS11_DEBUG";

pub fn debug_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(DEBUG_VAR).is_some())
}

/// How much a line matters. Without a log file, only warnings and errors
/// reach the application's stderr (everything with `HAHSM_PKCS11_DEBUG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Why a call failed; only with `HAHSM_PKCS11_DEBUG`.
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

pub fn log(level: Level, message: &str) {
    if level == Level::Debug && !debug_enabled() {
        return;
    }
    let line = format!(
        "hahsm-pkcs11[{}] {}: {message}\n",
        std::process::id(),
        level.name()
    );
    if let Some(path) = std::env::var_os(ENV_VAR) {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = f.write_all(line.as_bytes());
            return;
        }
    }
    // Routine HA events must not clutter an application's output.
    if level == Level::Info && !debug_enabled() {
        return;
    }
    let _ = std::io::stderr().write_all(line.as_bytes());
}

pub fn error(message: &str) {
    log(Level::Error, message);
}

pub fn warn(message: &str) {
    log(Level::Warn, message);
}

pub fn info(message: &str) {
    log(Level::Info, message);
}

pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Names the HA log: the report's table 5.2 lines in this file, and the same
/// events as JSON lines in `<file>.jsonl`. Unset: no HA log is written.
pub const HA_LOG_VAR: &str = "HAHSM_HA_LOG";

/// Writes one HA event about `member` (its serial, or its address if the
/// serial is not known yet), in the format the members use too.
pub fn ha_event(group: &str, event: HaEvent, member: &str) {
    let record = HaRecord {
        at: std::time::SystemTime::now(),
        pid: std::process::id(),
        group,
        member,
        event,
    };
    let line = record.text();
    log(Level::Info, &line);
    let Some(path) = std::env::var_os(HA_LOG_VAR) else {
        return;
    };
    let mut jsonl = path.clone();
    jsonl.push(".jsonl");
    for (p, text) in [(path, line), (jsonl, record.json())] {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(p) {
            let _ = writeln!(f, "{text}");
        }
    }
}

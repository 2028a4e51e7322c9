//! The module's log: one line per event, to the file named by
//! `HAHSM_PKCS11_LOG`, or else (warnings and errors only, unless
//! `HAHSM_PKCS11_DEBUG` is set) to stderr. It never receives PINs or key bytes: the
//! callers pass only names, codes and error messages built from `TokenError`
//! and `ClientError`, whose texts carry no secrets.
use std::io::Write;

pub const ENV_VAR: &str = "HAHSM_PKCS11_LOG";
/// Set to log every failed call with its reason (never with arguments).
pub const DEBUG_VAR: &str = "HAHSM_PKCS11_DEBUG";

pub fn debug_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(DEBUG_VAR).is_some())
}

pub fn log(level: &str, message: &str) {
    let line = format!("hahsm-pkcs11[{}] {level}: {message}\n", std::process::id());
    if let Some(path) = std::env::var_os(ENV_VAR) {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = f.write_all(line.as_bytes());
            return;
        }
    }
    // Without a log file, the application's stderr gets warnings and errors
    // only (and everything with HAHSM_PKCS11_DEBUG): routine HA events must
    // not clutter an application's output.
    if level == "info" && !debug_enabled() {
        return;
    }
    let _ = std::io::stderr().write_all(line.as_bytes());
}

pub fn error(message: &str) {
    log("error", message);
}

pub fn warn(message: &str) {
    log("warn", message);
}

/// Names the HA log: the report's table 5.2 lines in this file, and the same
/// events as JSON lines in `<file>.jsonl`. Unset: no HA log is written.
pub const HA_LOG_VAR: &str = "HAHSM_HA_LOG";

/// Writes one HA event: `dropped`, `recovery-failed` or `recovered` (with
/// the attempt number), `added` or `removed`, for the member with `serial`.
pub fn ha_event(group: &str, event: &str, member: &str, attempt: Option<u32>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let time = format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    );
    let pid = std::process::id();
    let line = match (event, attempt) {
        ("dropped", _) => format!("{time} [{pid}] HA group: {group} has dropped member: {member}"),
        ("recovery-failed", Some(n)) => {
            format!("{time} [{pid}] HA group: {group} recovery attempt #{n} failed for member: {member}")
        }
        ("recovered", Some(n)) => {
            format!("{time} [{pid}] HA group: {group} recovery attempt #{n} succeeded for member: {member}")
        }
        (other, _) => format!("{time} [{pid}] HA group: {group} has {other} member: {member}"),
    };
    log("info", &line);
    let Some(path) = std::env::var_os(HA_LOG_VAR) else {
        return;
    };
    let attempt = attempt.map_or("null".to_string(), |n| n.to_string());
    let json = format!(
        "{{\"time_ms\":{},\"pid\":{pid},\"group\":{},\"event\":{},\"member\":{},\"attempt\":{attempt}}}",
        now.as_millis(),
        json_string(group),
        json_string(event),
        json_string(member),
    );
    let mut jsonl = path.clone();
    jsonl.push(".jsonl");
    for (p, text) in [(path, line), (jsonl, json)] {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(p) {
            let _ = writeln!(f, "{text}");
        }
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

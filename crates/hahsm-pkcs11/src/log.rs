//! The module's log: one line per event, to the file named by
//! `HAHSM_PKCS11_LOG`, or to stderr. It never receives PINs or key bytes: the
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
    let _ = std::io::stderr().write_all(line.as_bytes());
}

pub fn error(message: &str) {
    log("error", message);
}

pub fn warn(message: &str) {
    log("warn", message);
}

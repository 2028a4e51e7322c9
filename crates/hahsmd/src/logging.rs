//! The member's log: text or JSON lines (`log_format`), to standard error or
//! appended to `log_file`, at `log_level` (or `RUST_LOG` at start). On SIGHUP
//! the file is opened again (after logrotate moved it away) and the level is
//! taken from the reloaded config. No secret is ever logged: callers pass
//! names, codes and error texts only.
use crate::config::{Config, LogFormat};
use crate::sync::Recover;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// A log file that can be opened again under its name.
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open the log file {}: {e}", path.display()))
}

impl LogFile {
    pub fn open(path: &Path) -> anyhow::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(open_append(path)?),
        })
    }

    /// Opens the file again by its name, so that lines go to a new file once
    /// the old one was moved away.
    pub fn reopen(&self) -> anyhow::Result<()> {
        let fresh = open_append(&self.path)?;
        *self.file.lock_or_recover() = fresh;
        Ok(())
    }
}

impl Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.lock_or_recover().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.lock_or_recover().flush()
    }
}

/// The running log, for SIGHUP.
pub struct Logging {
    file: Option<Arc<LogFile>>,
    level: reload::Handle<EnvFilter, Registry>,
}

/// The filter: `RUST_LOG` when set, else the config's level.
fn filter(config: &Config) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config.log_level.as_str()))
}

/// Starts the log as the config says.
pub fn start(config: &Config) -> anyhow::Result<Logging> {
    let file = match &config.log_file {
        Some(path) => Some(Arc::new(LogFile::open(path)?)),
        None => None,
    };
    let writer = match &file {
        Some(f) => BoxMakeWriter::new(f.clone()),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let (level, handle) = reload::Layer::new(filter(config));
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false);
    let lines = match config.log_format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(level)
        .with(lines)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot start the log: {e}"))?;
    Ok(Logging { file, level: handle })
}

impl Logging {
    /// After SIGHUP: the file opened again, the level of the reloaded config
    /// (which from now on replaces a `RUST_LOG` given at start).
    pub fn reload(&self, config: &Config) -> anyhow::Result<()> {
        if let Some(f) = &self.file {
            f.reopen()?;
        }
        self.level
            .reload(EnvFilter::new(config.log_level.as_str()))
            .map_err(|e| anyhow::anyhow!("cannot change the log level: {e}"))
    }
}

//! What the subcommands share: where the client config is, where a
//! member's admin socket is, and how an error is printed.
use std::path::PathBuf;

/// Where the client config is: `--conf`, `HAHSM_CONF`, or `~/.hahsm/client.toml`.
#[derive(clap::Args, Clone)]
pub struct ConfArg {
    /// The client config file [env: HAHSM_CONF; default: ~/.hahsm/client.toml]
    #[arg(long, global = true)]
    pub conf: Option<PathBuf>,
}

impl ConfArg {
    pub fn path(&self) -> PathBuf {
        self.conf
            .clone()
            .unwrap_or_else(hahsm_client::ClientConfig::default_path)
    }
}

/// The error and its causes, leaving out a cause whose text the message
/// already carries (many errors quote their source).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// `--socket`, or the socket in `--data-dir`.
pub fn admin_socket(socket: Option<PathBuf>, data_dir: &std::path::Path) -> PathBuf {
    socket.unwrap_or_else(|| data_dir.join("admin.sock"))
}

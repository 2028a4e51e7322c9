//! `hahsm client …`: the client's certificate, its trusted servers and the
//! client config that the CLI and the PKCS#11 module read (the report's `vtl`).
use crate::common::ConfArg;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hahsm_client::{ClientConfig, MemberConnection, ServerEntry};
use hahsm_proto::client::{Request, Response};
use std::path::PathBuf;

#[derive(Args)]
pub struct ClientArgs {
    #[command(flatten)]
    conf: ConfArg,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Create this client's certificate and key, and point the client config at them.
    CreateCert {
        /// The client's name (the report used its IP address).
        #[arg(long)]
        name: String,
        /// Where to write NAME.pem and NAME.key; next to the config by default.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Trust a server: pin its certificate (by file or by fingerprint).
    AddServer {
        #[arg(long)]
        name: String,
        /// host:port of the member's client link.
        #[arg(long)]
        address: String,
        #[arg(long, conflicts_with = "fingerprint")]
        cert: Option<PathBuf>,
        #[arg(long)]
        fingerprint: Option<String>,
    },
    RemoveServer {
        #[arg(long)]
        name: String,
    },
    /// Print the client config and this client's certificate fingerprint.
    Show,
    /// Connect to every trusted server and list the partitions it assigns to us.
    Verify,
}

pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let path = args.conf.path();
    match args.command {
        ClientCommand::CreateCert { name, dir } => {
            let mut config = match ClientConfig::load(&path) {
                Ok(c) => c,
                Err(hahsm_client::config::ConfigError::NotFound(_)) => ClientConfig::default(),
                Err(e) => return Err(e.into()),
            };
            let dir = dir.unwrap_or_else(|| path.parent().map(PathBuf::from).unwrap_or_default());
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let cert_path = dir.join(format!("{name}.pem"));
            let key_path = dir.join(format!("{name}.key"));
            if cert_path.exists() || key_path.exists() {
                bail!(
                    "{} or {} exists already; remove them first",
                    cert_path.display(),
                    key_path.display()
                );
            }
            let (cert_pem, key_pem) = hahsm_link::generate_self_signed(&name, &[])?;
            hahsm_link::write_private_file(&key_path, key_pem.as_bytes())?;
            std::fs::write(&cert_path, cert_pem.as_bytes())?;
            config.cert = std::fs::canonicalize(&cert_path)?;
            config.key = std::fs::canonicalize(&key_path)?;
            config.save(&path)?;
            let fp = hahsm_link::Fingerprint::of_der(&hahsm_link::cert_from_pem(&cert_pem)?);
            println!("client certificate: {}", cert_path.display());
            println!("client key:         {} (mode 0600)", key_path.display());
            println!("fingerprint:        {fp}");
            println!("client config:      {}", path.display());
            println!(
                "register it on each member: hahsm appliance client register --client {name} --cert {}",
                cert_path.display()
            );
        }
        ClientCommand::AddServer {
            name,
            address,
            cert,
            fingerprint,
        } => {
            let mut config = ClientConfig::load(&path).context("run `hahsm client create-cert` first")?;
            let fingerprint = match (cert, fingerprint) {
                (Some(p), _) => hahsm_link::Fingerprint::of_der(&hahsm_link::load_cert_pem(&p)?).to_string(),
                (None, Some(f)) => hahsm_link::Fingerprint::parse(&f)?.to_string(),
                (None, None) => bail!("give the server's --cert FILE or --fingerprint"),
            };
            config.servers.retain(|s| s.name != name);
            config.servers.push(ServerEntry {
                name: name.clone(),
                address,
                fingerprint: fingerprint.clone(),
            });
            config.save(&path)?;
            println!("server '{name}' pinned to {fingerprint}");
        }
        ClientCommand::RemoveServer { name } => {
            let mut config = ClientConfig::load(&path)?;
            let before = config.servers.len();
            config.servers.retain(|s| s.name != name);
            if config.servers.len() == before {
                bail!("no server named '{name}' in {}", path.display());
            }
            config.save(&path)?;
            println!("server '{name}' removed");
        }
        ClientCommand::Show => {
            let config = ClientConfig::load(&path)?;
            println!("client config: {}", path.display());
            println!("certificate:   {}", config.cert.display());
            if let Ok(der) = hahsm_link::load_cert_pem(&config.cert) {
                println!("fingerprint:   {}", hahsm_link::Fingerprint::of_der(&der));
            }
            for s in &config.servers {
                println!("server {:<16} {:<22} {}", s.name, s.address, s.fingerprint);
            }
        }
        ClientCommand::Verify => {
            let config = ClientConfig::load(&path)?;
            if config.servers.is_empty() {
                bail!(
                    "no servers in {}; add one with `hahsm client add-server`",
                    path.display()
                );
            }
            let mut failures = 0;
            for server in &config.servers {
                match verify_one(&config, server).await {
                    Ok(lines) => {
                        for l in lines {
                            println!("{l}");
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        println!("{}: FAILED: {e:#}", server.name);
                    }
                }
            }
            if failures > 0 {
                bail!("{failures} server(s) failed verification");
            }
        }
    }
    Ok(())
}

async fn verify_one(config: &ClientConfig, server: &ServerEntry) -> anyhow::Result<Vec<String>> {
    let conn = MemberConnection::connect(config, server).await?;
    let info = conn.info().clone();
    let mut lines = vec![format!(
        "{}: connected to HSM '{}' (serial {}) as client '{}'",
        server.name, info.hsm_label, info.serial, info.client_name
    )];
    match conn.call(Request::ListPartitions).await? {
        Response::Partitions(ps) if ps.is_empty() => lines.push("  no partitions assigned".into()),
        Response::Partitions(ps) => {
            for p in ps {
                let state = if p.activated { "activated" } else { "NOT activated" };
                lines.push(format!(
                    "  partition {} (serial {}): {state}, {} object(s)",
                    p.name, p.serial, p.object_count
                ));
            }
        }
        other => bail!("unexpected answer {other:?}"),
    }
    Ok(lines)
}

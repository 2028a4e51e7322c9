//! Custody of the cloning-domain secret (the report's red key, §5.1.3) and
//! partition backups:
//! - `hahsm domain split` turns a domain secret file into N share files, any M
//!   of which rebuild it, and destroys the secret file it read;
//! - `--domain-secret FILE` or `--share FILE` (repeated) wherever the domain
//!   secret is needed: `appliance hsm init`, `ha add-member`, `backup`, `restore`;
//! - `hahsm backup` / `hahsm restore`: the member encrypts and decrypts; the CLI
//!   only moves the encrypted file.
use crate::common::admin_socket;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hahsm_client::admin::AdminClient;
use hahsm_client::secrets;
use hahsm_proto::admin::{AdminRequest as R, AdminResponse, Blob, DomainSecret};
use std::path::{Path, PathBuf};

/// The domain secret, whole or as shares.
#[derive(Args, Clone, Default)]
pub struct DomainArgs {
    /// The whole cloning-domain secret file.
    #[arg(long, conflicts_with = "share")]
    pub domain_secret: Option<PathBuf>,
    /// A share of the domain secret (from `hahsm domain split`); repeat it for M shares.
    #[arg(long = "share")]
    pub share: Vec<PathBuf>,
}

impl DomainArgs {
    /// What the operator gave, if anything.
    pub fn read(&self) -> anyhow::Result<Option<DomainSecret>> {
        if let Some(path) = &self.domain_secret {
            return Ok(Some(DomainSecret::Whole(secrets::read_secret(path)?)));
        }
        if self.share.is_empty() {
            return Ok(None);
        }
        let shares = self
            .share
            .iter()
            .map(|p| secrets::read_share(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(DomainSecret::Shares(shares)))
    }

    pub fn required(&self) -> anyhow::Result<DomainSecret> {
        self.read()?.ok_or_else(|| {
            anyhow::anyhow!(
                "give the domain secret: --domain-secret FILE, or --share FILE for each of M shares"
            )
        })
    }
}

#[derive(Args)]
pub struct DomainCmdArgs {
    #[command(subcommand)]
    command: DomainCommand,
}

#[derive(Subcommand)]
enum DomainCommand {
    /// Split a domain secret file into N shares, any M of which rebuild it
    /// (Shamir over GF(256)). The secret file is overwritten and removed
    /// afterwards: from then on only the shares exist.
    Split {
        /// The domain secret file to split; it is destroyed.
        #[arg(long)]
        domain_secret: PathBuf,
        /// N: how many shares to write.
        #[arg(long)]
        shares: usize,
        /// M: how many shares rebuild the secret (at least 2).
        #[arg(long)]
        threshold: usize,
        /// Where to write `domain-share-<i>-of-<N>.key`; hand each to its custodian.
        #[arg(long)]
        out_dir: PathBuf,
    },
}

pub fn run_domain(args: DomainCmdArgs) -> anyhow::Result<()> {
    match args.command {
        DomainCommand::Split {
            domain_secret,
            shares,
            threshold,
            out_dir,
        } => split(&domain_secret, shares, threshold, &out_dir),
    }
}

fn split(secret_path: &Path, count: usize, threshold: usize, out_dir: &Path) -> anyhow::Result<()> {
    let secret = secrets::read_secret(secret_path)?;
    let parts = hahsm_crypto::shares::split(secret.expose(), threshold, count)?;
    drop(secret);
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut written: Vec<PathBuf> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let path = out_dir.join(format!("domain-share-{}-of-{count}.key", i + 1));
        let info = hahsm_crypto::shares::inspect(part.expose(), i + 1)?;
        let comment = format!(
            "hahsm domain share {} of {count}; any {threshold} rebuild the domain secret; split {}",
            i + 1,
            hex::encode(&info.split_id[..4])
        );
        if let Err(e) = secrets::write_share_file(&path, &comment, part.expose()) {
            // Do not leave a partial split next to a secret that still exists.
            for p in &written {
                let _ = secrets::destroy_secret_file(p);
            }
            return Err(e.into());
        }
        written.push(path);
    }
    secrets::destroy_secret_file(secret_path)?;
    for p in &written {
        println!("wrote {}", p.display());
    }
    println!(
        "the domain secret {} was overwritten and removed; any {threshold} of these {count} shares rebuild it",
        secret_path.display()
    );
    Ok(())
}

/// Where the member's admin socket is.
#[derive(Args, Clone)]
pub struct SocketArgs {
    /// The member's admin socket [env: HAHSM_ADMIN_SOCKET; default: <data-dir>/admin.sock]
    #[arg(long, env = "HAHSM_ADMIN_SOCKET")]
    pub socket: Option<PathBuf>,
    /// The member's data directory, to find its admin socket.
    #[arg(long, env = "HAHSM_DATA_DIR", default_value = "/var/lib/hahsm")]
    pub data_dir: PathBuf,
}

impl SocketArgs {
    pub fn path(&self) -> PathBuf {
        admin_socket(self.socket.clone(), &self.data_dir)
    }
}

/// `hahsm backup`: the member writes an encrypted backup of a partition.
#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    socket: SocketArgs,
    #[arg(long)]
    partition: String,
    /// The partition-owner secret file.
    #[arg(long)]
    owner_secret: PathBuf,
    #[command(flatten)]
    domain: DomainArgs,
    /// The backup file to write (mode 0600; refused if it exists).
    #[arg(long)]
    out: PathBuf,
}

/// `hahsm restore`: the member restores a backup as a new partition.
#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// The name of the partition to create from the backup.
    #[arg(long)]
    partition: String,
    #[arg(long)]
    owner_secret: PathBuf,
    #[command(flatten)]
    domain: DomainArgs,
    /// The backup file.
    #[arg(long)]
    file: PathBuf,
}

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    if args.out.exists() {
        bail!("{} exists; choose a new backup file", args.out.display());
    }
    let request = R::PartitionBackup {
        name: args.partition.clone(),
        owner_secret: secrets::read_secret(&args.owner_secret)?,
        domain: args.domain.required()?,
    };
    let mut admin = AdminClient::connect(&args.socket.path()).await?;
    match admin.call(request).await? {
        AdminResponse::Backup(blob) => {
            hahsm_link::write_private_file(&args.out, &blob.0)
                .with_context(|| format!("cannot write {}", args.out.display()))?;
            println!(
                "partition '{}' backed up to {} ({} bytes, encrypted and authenticated)",
                args.partition,
                args.out.display(),
                blob.0.len()
            );
            Ok(())
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let request = R::PartitionRestore {
        name: args.partition,
        owner_secret: secrets::read_secret(&args.owner_secret)?,
        domain: args.domain.required()?,
        backup: Blob(bytes),
    };
    let mut admin = AdminClient::connect(&args.socket.path()).await?;
    match admin.call(request).await? {
        AdminResponse::Done(msg) => {
            println!("{msg}");
            Ok(())
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

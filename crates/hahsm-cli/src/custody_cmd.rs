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
use hahsm_proto::backup_file;
use std::io::{Read, Write};
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
    let owner_secret = secrets::read_secret(&args.owner_secret)?;
    let domain = args.domain.required()?;
    let mut admin = AdminClient::connect(&args.socket.path()).await?;
    // Written under a temporary name beside the file, then renamed: a backup
    // that stops half-way leaves no file that looks like a backup.
    let tmp = partial_path(&args.out);
    let written = async {
        let mut file = create_private(&tmp)?;
        let (mut cursor, mut bytes, mut shown) = (None, 0u64, std::time::Instant::now());
        loop {
            let request = R::PartitionBackup {
                name: args.partition.clone(),
                owner_secret: owner_secret.clone(),
                domain: domain.clone(),
                cursor: cursor.take(),
            };
            match admin.call(request).await? {
                AdminResponse::BackupPart {
                    bytes: part,
                    cursor: next,
                    done,
                    total,
                } => {
                    file.write_all(&part.0)
                        .with_context(|| format!("cannot write {}", tmp.display()))?;
                    bytes += part.0.len() as u64;
                    if next.is_none() || shown.elapsed() >= std::time::Duration::from_secs(1) {
                        eprintln!("backed up {done} of {total} states ({bytes} bytes)");
                        shown = std::time::Instant::now();
                    }
                    match next {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
                other => bail!("unexpected answer {other:?}"),
            }
        }
        file.sync_all()
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
        anyhow::Ok(bytes)
    }
    .await;
    let bytes = match written {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if args.out.exists() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "{} appeared while the backup ran; the backup is not kept",
            args.out.display()
        );
    }
    std::fs::rename(&tmp, &args.out).with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "partition '{}' backed up to {} ({} bytes, encrypted and authenticated)",
        args.partition,
        args.out.display(),
        bytes
    );
    Ok(())
}

/// Where a backup is written until it is complete.
fn partial_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}.partial.{}", std::process::id()))
}

/// A new file readable by its owner only; refused if it exists.
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let mut file = std::io::BufReader::new(
        std::fs::File::open(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?,
    );
    let head = backup_file::read_head(&mut file)
        .with_context(|| format!("{} is not a hahsm backup file", args.file.display()))?;
    let owner_secret = secrets::read_secret(&args.owner_secret)?;
    let domain = args.domain.required()?;
    let mut admin = AdminClient::connect(&args.socket.path()).await?;
    if backup_file::parse_head(backup_file::MAGIC_V1, &head).is_some() {
        // Format 1: the whole file in one request.
        let mut bytes = head;
        file.read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
        let request = R::PartitionRestore {
            name: args.partition,
            owner_secret,
            domain,
            backup: Blob(bytes),
        };
        return match admin.call(request).await? {
            AdminResponse::Done(msg) => {
                println!("{msg}");
                Ok(())
            }
            other => bail!("unexpected answer {other:?}"),
        };
    }
    let begin = R::PartitionRestoreBegin {
        name: args.partition,
        owner_secret,
        domain,
        head: Blob(head),
    };
    match admin.call(begin).await? {
        AdminResponse::Done(_) => {}
        other => bail!("unexpected answer {other:?}"),
    }
    // A file cut short mid-chunk ends here: the connection closes, and the
    // member deletes what it restored so far.
    let mut shown = std::time::Instant::now();
    while let Some(record) = backup_file::read_record(&mut file).with_context(|| {
        format!(
            "{} is damaged or cut short; nothing is restored",
            args.file.display()
        )
    })? {
        match admin
            .call(R::PartitionRestoreChunk { record: Blob(record) })
            .await?
        {
            AdminResponse::RestoreProgress { done, total } => {
                if shown.elapsed() >= std::time::Duration::from_secs(1) {
                    eprintln!("restored {done} of {total} states");
                    shown = std::time::Instant::now();
                }
            }
            other => bail!("unexpected answer {other:?}"),
        }
    }
    match admin.call(R::PartitionRestoreEnd).await? {
        AdminResponse::Done(msg) => {
            println!("{msg}");
            Ok(())
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

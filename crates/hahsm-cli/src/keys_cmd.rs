//! `hahsm keys …`: key management and use on one member, over the mutual-TLS
//! link (the report's `cmu`).
use crate::common::ConfArg;
use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use hahsm_client::connection::new_op_id;
use hahsm_client::{ClientConfig, MemberConnection};
use hahsm_proto::client::{AttrResult, Request, Response, USER_NORMAL};
use hahsm_proto::Secret;
use hahsm_token::{ck, mechanism, AttrValue, MechParams, Mechanism, Ouid, Template};
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Args)]
pub struct KeysArgs {
    #[command(flatten)]
    conf: ConfArg,
    /// Which configured server to use (the first by default).
    #[arg(long, global = true)]
    server: Option<String>,
    /// The partition [env: HAHSM_PARTITION]
    #[arg(long, global = true, env = "HAHSM_PARTITION")]
    partition: Option<String>,
    /// The partition's user PIN [env: HAHSM_PIN]
    #[arg(long, global = true, env = "HAHSM_PIN", hide_env_values = true)]
    pin: Option<String>,
    #[command(subcommand)]
    command: KeysCommand,
}

/// Picks one object.
#[derive(Args, Clone)]
struct Selector {
    #[arg(long)]
    label: Option<String>,
    /// The object's cluster-unique id (CKA_UNIQUE_ID), 32 hex digits.
    #[arg(long)]
    ouid: Option<String>,
    /// CKA_ID, in hex.
    #[arg(long)]
    id: Option<String>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate a key: rsa:2048|3072|4096, ec:p256|p384|p521, ed25519, ml-dsa-44|65|87,
    /// ml-kem-512|768|1024, aes:128|192|256, generic:BITS.
    Gen {
        #[arg(long = "type")]
        key_type: String,
        #[arg(long)]
        label: String,
        /// CKA_ID in hex.
        #[arg(long)]
        id: Option<String>,
        /// Allow the key to be wrapped out (off by default).
        #[arg(long)]
        extractable: bool,
    },
    /// List the objects in the partition.
    List,
    /// Show one object's attributes.
    Show(Selector),
    /// Change attributes: --set label=NEW --set sign=false --set id=0a0b …
    SetAttr {
        #[command(flatten)]
        sel: Selector,
        #[arg(long = "set", required = true)]
        sets: Vec<String>,
    },
    /// Destroy an object (or both halves of a key pair with --pair).
    Delete {
        #[command(flatten)]
        sel: Selector,
    },
    /// Import a private key from a PEM file (PKCS#8, PKCS#1 or SEC1); its public half is stored too.
    Import {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        label: String,
        #[arg(long)]
        id: Option<String>,
    },
    /// Write a public key as PEM (SubjectPublicKeyInfo).
    Pubkey {
        #[command(flatten)]
        sel: Selector,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    Sign {
        #[command(flatten)]
        sel: Selector,
        #[command(flatten)]
        mech: MechArgs,
        #[command(flatten)]
        io: IoArgs,
    },
    Verify {
        #[command(flatten)]
        sel: Selector,
        #[command(flatten)]
        mech: MechArgs,
        #[arg(long = "in")]
        input: Option<PathBuf>,
        #[arg(long)]
        signature: PathBuf,
    },
    Encrypt {
        #[command(flatten)]
        sel: Selector,
        #[command(flatten)]
        mech: MechArgs,
        #[command(flatten)]
        io: IoArgs,
    },
    Decrypt {
        #[command(flatten)]
        sel: Selector,
        #[command(flatten)]
        mech: MechArgs,
        #[command(flatten)]
        io: IoArgs,
    },
    /// Random bytes from the member.
    Random {
        #[arg(long)]
        bytes: u32,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    Digest {
        #[arg(long)]
        mech: String,
        #[command(flatten)]
        io: IoArgs,
    },
}

#[derive(Args, Clone)]
struct MechArgs {
    /// Mechanism, e.g. SHA256-RSA-PKCS, SHA256-RSA-PKCS-PSS, ECDSA-SHA256, EDDSA, AES-GCM, RSA-PKCS-OAEP, SHA256-HMAC.
    #[arg(long)]
    mech: String,
    /// IV for AES-CBC, AES-CBC-PAD and AES-GCM, in hex.
    #[arg(long)]
    iv: Option<String>,
    /// Additional authenticated data for AES-GCM, in hex.
    #[arg(long)]
    aad: Option<String>,
    /// Hash for OAEP and for RSA-PKCS-PSS: sha1, sha256, sha384, sha512.
    #[arg(long, default_value = "sha256")]
    hash: String,
}

#[derive(Args, Clone)]
struct IoArgs {
    /// Input file (standard input if absent).
    #[arg(long = "in")]
    input: Option<PathBuf>,
    /// Output file (standard output if absent).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn read_input(path: &Option<PathBuf>) -> anyhow::Result<Vec<u8>> {
    match path {
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display())),
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            Ok(buf)
        }
    }
}

fn write_output(path: &Option<PathBuf>, data: &[u8]) -> anyhow::Result<()> {
    match path {
        Some(p) => std::fs::write(p, data).with_context(|| format!("cannot write {}", p.display())),
        None => {
            std::io::stdout().write_all(data)?;
            Ok(())
        }
    }
}

fn hash_mech(name: &str) -> anyhow::Result<(u64, u64, u64)> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "sha1" | "sha-1" => (ck::CKM_SHA_1, ck::CKG_MGF1_SHA1, 20),
        "sha224" => (ck::CKM_SHA224, ck::CKG_MGF1_SHA224, 28),
        "sha256" => (ck::CKM_SHA256, ck::CKG_MGF1_SHA256, 32),
        "sha384" => (ck::CKM_SHA384, ck::CKG_MGF1_SHA384, 48),
        "sha512" => (ck::CKM_SHA512, ck::CKG_MGF1_SHA512, 64),
        other => bail!("unknown hash '{other}'"),
    })
}

fn hex_arg(value: &Option<String>, what: &str) -> anyhow::Result<Vec<u8>> {
    match value {
        Some(v) => hex::decode(v).map_err(|_| anyhow!("--{what} must be hex")),
        None => Ok(Vec::new()),
    }
}

/// Builds the mechanism and its parameters from the command line.
fn mechanism_of(args: &MechArgs) -> anyhow::Result<Mechanism> {
    let mech = mechanism::by_name(&args.mech).ok_or_else(|| anyhow!("unknown mechanism '{}'", args.mech))?;
    let params = match mech {
        ck::CKM_AES_CBC | ck::CKM_AES_CBC_PAD => MechParams::Iv(hex_arg(&args.iv, "iv")?),
        ck::CKM_AES_GCM => MechParams::Gcm {
            iv: hex_arg(&args.iv, "iv")?,
            aad: hex_arg(&args.aad, "aad")?,
            tag_bits: 128,
        },
        ck::CKM_RSA_PKCS_OAEP => {
            let (hash, mgf, _) = hash_mech(&args.hash)?;
            MechParams::Oaep {
                hash,
                mgf,
                label: Vec::new(),
            }
        }
        ck::CKM_RSA_PKCS_PSS => {
            let (hash, mgf, len) = hash_mech(&args.hash)?;
            MechParams::Pss {
                hash,
                mgf,
                salt_len: len,
            }
        }
        ck::CKM_SHA1_RSA_PKCS_PSS
        | ck::CKM_SHA224_RSA_PKCS_PSS
        | ck::CKM_SHA256_RSA_PKCS_PSS
        | ck::CKM_SHA384_RSA_PKCS_PSS
        | ck::CKM_SHA512_RSA_PKCS_PSS => {
            let name = args.mech.to_ascii_lowercase();
            let (hash, mgf, len) = hash_mech(name.split('-').next().unwrap_or("sha256"))?;
            MechParams::Pss {
                hash,
                mgf,
                salt_len: len,
            }
        }
        _ => MechParams::None,
    };
    Ok(Mechanism::with(mech, params))
}

struct Session {
    conn: MemberConnection,
    partition: String,
}

impl Session {
    async fn open(args: &KeysArgs, login: bool) -> anyhow::Result<Session> {
        let path = args.conf.path();
        let config = ClientConfig::load(&path)?;
        let server = config
            .server(args.server.as_deref())
            .ok_or_else(|| {
                anyhow!(
                    "no server {} in {}",
                    args.server.as_deref().unwrap_or("at all"),
                    path.display()
                )
            })?
            .clone();
        let conn = MemberConnection::connect(&config, &server).await?;
        let partition = match &args.partition {
            Some(p) => p.clone(),
            None => match conn.call(Request::ListPartitions).await? {
                Response::Partitions(ps) if ps.len() == 1 => ps[0].name.clone(),
                Response::Partitions(ps) if ps.is_empty() => {
                    bail!("no partition is assigned to this client")
                }
                _ => bail!("several partitions are assigned to this client: choose one with --partition"),
            },
        };
        if login {
            let pin = args
                .pin
                .clone()
                .ok_or_else(|| anyhow!("this command needs the user PIN: --pin or HAHSM_PIN"))?;
            conn.call(Request::Login {
                partition: partition.clone(),
                user_type: USER_NORMAL,
                pin: Secret::from(pin.as_str()),
            })
            .await
            .context("login failed")?;
        }
        Ok(Session { conn, partition })
    }

    async fn find(&self, template: Template) -> anyhow::Result<Vec<Ouid>> {
        match self
            .conn
            .call(Request::FindObjects {
                partition: self.partition.clone(),
                template,
                limit: 100_000,
                read: 0,
            })
            .await?
        {
            Response::Objects(o) => Ok(o),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// Finds exactly one object matching the selector, of `class` if given.
    async fn select(&self, sel: &Selector, class: Option<u64>) -> anyhow::Result<Ouid> {
        if let Some(o) = &sel.ouid {
            return Ouid::parse(o).ok_or_else(|| anyhow!("--ouid must be 32 hex digits"));
        }
        let mut t = Template::new();
        if let Some(l) = &sel.label {
            t.set(ck::CKA_LABEL, AttrValue::Bytes(l.as_bytes().to_vec()));
        }
        if let Some(id) = &sel.id {
            t.set(
                ck::CKA_ID,
                AttrValue::Bytes(hex::decode(id).map_err(|_| anyhow!("--id must be hex"))?),
            );
        }
        if t.is_empty() {
            bail!("choose the object with --label, --id or --ouid");
        }
        if let Some(c) = class {
            t.set(ck::CKA_CLASS, AttrValue::Ulong(c));
        }
        let found = self.find(t).await?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => bail!(
                "no matching object{}",
                class
                    .map(|c| format!(" of class {}", hahsm_token::object::class_name(c)))
                    .unwrap_or_default()
            ),
            many => bail!("{} objects match; choose one with --ouid", many.len()),
        }
    }

    /// Like `select`, but for a key used by `mech`: a public key for verify and
    /// encrypt with asymmetric mechanisms, a private key for sign and decrypt.
    async fn select_key(&self, sel: &Selector, mech: u64, private_side: bool) -> anyhow::Result<Ouid> {
        let class = match mechanism::key_type_for(mech) {
            Some(ck::CKK_AES) | Some(ck::CKK_GENERIC_SECRET) => ck::CKO_SECRET_KEY,
            _ if private_side => ck::CKO_PRIVATE_KEY,
            _ => ck::CKO_PUBLIC_KEY,
        };
        self.select(sel, Some(class)).await
    }

    async fn attributes(&self, object: Ouid, types: Vec<u64>) -> anyhow::Result<Vec<(u64, AttrResult)>> {
        match self
            .conn
            .call(Request::GetAttributes {
                partition: self.partition.clone(),
                object,
                types,
            })
            .await?
        {
            Response::Attributes(a) => Ok(a),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    async fn bytes(&self, request: Request) -> anyhow::Result<Vec<u8>> {
        match self.conn.call(request).await? {
            Response::Bytes(b) => Ok(b),
            other => bail!("unexpected answer {other:?}"),
        }
    }
}

fn key_templates(
    spec: &str,
    label: &str,
    id: &[u8],
    extractable: bool,
) -> anyhow::Result<(Mechanism, Template, Option<Template>)> {
    let (kind, size) = spec.split_once(':').unwrap_or((spec, ""));
    let base = Template::new()
        .with(ck::CKA_TOKEN, AttrValue::Bool(true))
        .with(ck::CKA_LABEL, AttrValue::Bytes(label.as_bytes().to_vec()))
        .with(ck::CKA_ID, AttrValue::Bytes(id.to_vec()));
    let private = base
        .clone()
        .with(ck::CKA_EXTRACTABLE, AttrValue::Bool(extractable));
    let bits = |default: u64| -> anyhow::Result<u64> {
        if size.is_empty() {
            Ok(default)
        } else {
            size.parse().map_err(|_| anyhow!("bad key size '{size}'"))
        }
    };
    // ML-DSA and ML-KEM by parameter set: ml-dsa-65 (or ml-dsa:65).
    let ml = match spec.to_ascii_lowercase().replace(':', "-").as_str() {
        "ml-dsa-44" => Some((ck::CKM_ML_DSA_KEY_PAIR_GEN, ck::CKP_ML_DSA_44)),
        "ml-dsa-65" => Some((ck::CKM_ML_DSA_KEY_PAIR_GEN, ck::CKP_ML_DSA_65)),
        "ml-dsa-87" => Some((ck::CKM_ML_DSA_KEY_PAIR_GEN, ck::CKP_ML_DSA_87)),
        "ml-kem-512" => Some((ck::CKM_ML_KEM_KEY_PAIR_GEN, ck::CKP_ML_KEM_512)),
        "ml-kem-768" => Some((ck::CKM_ML_KEM_KEY_PAIR_GEN, ck::CKP_ML_KEM_768)),
        "ml-kem-1024" => Some((ck::CKM_ML_KEM_KEY_PAIR_GEN, ck::CKP_ML_KEM_1024)),
        _ => None,
    };
    if let Some((mech, set)) = ml {
        return Ok((
            Mechanism::new(mech),
            base.with(ck::CKA_PARAMETER_SET, AttrValue::Ulong(set)),
            Some(private),
        ));
    }
    Ok(match kind.to_ascii_lowercase().as_str() {
        "rsa" => (
            Mechanism::new(ck::CKM_RSA_PKCS_KEY_PAIR_GEN),
            base.with(ck::CKA_MODULUS_BITS, AttrValue::Ulong(bits(2048)?))
                .with(ck::CKA_PUBLIC_EXPONENT, AttrValue::Bytes(vec![1, 0, 1])),
            Some(private),
        ),
        "ec" => {
            let params: &[u8] = match size.to_ascii_lowercase().replace('-', "").as_str() {
                "" | "p256" | "prime256v1" | "secp256r1" => {
                    &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
                }
                "p384" | "secp384r1" => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
                "p521" | "secp521r1" => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
                other => bail!("unknown curve '{other}': use p256, p384 or p521"),
            };
            (
                Mechanism::new(ck::CKM_EC_KEY_PAIR_GEN),
                base.with(ck::CKA_EC_PARAMS, AttrValue::Bytes(params.to_vec())),
                Some(private),
            )
        }
        "ed25519" => (
            Mechanism::new(ck::CKM_EC_EDWARDS_KEY_PAIR_GEN),
            base,
            Some(private),
        ),
        "aes" => (
            Mechanism::new(ck::CKM_AES_KEY_GEN),
            private.with(ck::CKA_VALUE_LEN, AttrValue::Ulong(bits(256)? / 8)),
            None,
        ),
        "generic" | "hmac" => (
            Mechanism::new(ck::CKM_GENERIC_SECRET_KEY_GEN),
            private.with(ck::CKA_VALUE_LEN, AttrValue::Ulong(bits(256)? / 8)),
            None,
        ),
        other => bail!(
            "unknown key type '{other}': use rsa, ec, ed25519, ml-dsa-44|65|87, ml-kem-512|768|1024, aes or generic"
        ),
    })
}

/// Parses `name=value` for `set-attr`.
fn parse_set(item: &str) -> anyhow::Result<(u64, AttrValue)> {
    let (name, value) = item
        .split_once('=')
        .ok_or_else(|| anyhow!("--set takes name=value, got '{item}'"))?;
    let flag = |attr| -> anyhow::Result<(u64, AttrValue)> {
        match value {
            "true" | "1" | "yes" => Ok((attr, AttrValue::Bool(true))),
            "false" | "0" | "no" => Ok((attr, AttrValue::Bool(false))),
            _ => bail!("{name} takes true or false"),
        }
    };
    match name {
        "label" => Ok((ck::CKA_LABEL, AttrValue::Bytes(value.as_bytes().to_vec()))),
        "id" => Ok((
            ck::CKA_ID,
            AttrValue::Bytes(hex::decode(value).map_err(|_| anyhow!("id takes hex"))?),
        )),
        "sign" => flag(ck::CKA_SIGN),
        "verify" => flag(ck::CKA_VERIFY),
        "encrypt" => flag(ck::CKA_ENCRYPT),
        "decrypt" => flag(ck::CKA_DECRYPT),
        "wrap" => flag(ck::CKA_WRAP),
        "unwrap" => flag(ck::CKA_UNWRAP),
        "derive" => flag(ck::CKA_DERIVE),
        "sensitive" => flag(ck::CKA_SENSITIVE),
        "extractable" => flag(ck::CKA_EXTRACTABLE),
        "modifiable" => flag(ck::CKA_MODIFIABLE),
        "destroyable" => flag(ck::CKA_DESTROYABLE),
        "copyable" => flag(ck::CKA_COPYABLE),
        "private" => flag(ck::CKA_PRIVATE),
        other => bail!("unknown attribute '{other}' for --set"),
    }
}

fn attr_name(attr: u64) -> String {
    let name = match attr {
        ck::CKA_CLASS => "class",
        ck::CKA_KEY_TYPE => "key-type",
        ck::CKA_LABEL => "label",
        ck::CKA_ID => "id",
        ck::CKA_UNIQUE_ID => "unique-id",
        ck::CKA_TOKEN => "token",
        ck::CKA_PRIVATE => "private",
        ck::CKA_SENSITIVE => "sensitive",
        ck::CKA_EXTRACTABLE => "extractable",
        ck::CKA_ALWAYS_SENSITIVE => "always-sensitive",
        ck::CKA_NEVER_EXTRACTABLE => "never-extractable",
        ck::CKA_LOCAL => "local",
        ck::CKA_MODIFIABLE => "modifiable",
        ck::CKA_COPYABLE => "copyable",
        ck::CKA_DESTROYABLE => "destroyable",
        ck::CKA_SIGN => "sign",
        ck::CKA_VERIFY => "verify",
        ck::CKA_ENCRYPT => "encrypt",
        ck::CKA_DECRYPT => "decrypt",
        ck::CKA_WRAP => "wrap",
        ck::CKA_UNWRAP => "unwrap",
        ck::CKA_DERIVE => "derive",
        ck::CKA_MODULUS_BITS => "modulus-bits",
        ck::CKA_VALUE_LEN => "value-len",
        ck::CKA_KEY_GEN_MECHANISM => "key-gen-mechanism",
        ck::CKA_EC_PARAMS => "ec-params",
        ck::CKA_EC_POINT => "ec-point",
        ck::CKA_MODULUS => "modulus",
        ck::CKA_PUBLIC_EXPONENT => "public-exponent",
        _ => return format!("{attr:#x}"),
    };
    name.to_string()
}

fn show_value(attr: u64, v: &AttrValue) -> String {
    match (attr, v) {
        (ck::CKA_CLASS, AttrValue::Ulong(c)) => hahsm_token::object::class_name(*c).to_string(),
        (ck::CKA_KEY_TYPE, AttrValue::Ulong(k)) => hahsm_token::object::key_type_name(*k).to_string(),
        (ck::CKA_LABEL | ck::CKA_UNIQUE_ID, AttrValue::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        (_, AttrValue::Bool(b)) => b.to_string(),
        (_, AttrValue::Ulong(u)) => u.to_string(),
        (_, AttrValue::Bytes(b)) if b.len() > 48 => {
            format!("{}… ({} bytes)", hex::encode(&b[..24]), b.len())
        }
        (_, AttrValue::Bytes(b)) => hex::encode(b),
        (_, AttrValue::UlongList(l)) => format!("{l:x?}"),
        (_, AttrValue::Array(t)) => t
            .iter()
            .map(|(a, v)| format!("{}={}", attr_name(*a), show_value(*a, v)))
            .collect::<Vec<_>>()
            .join(","),
    }
}

const SHOWN: &[u64] = &[
    ck::CKA_UNIQUE_ID,
    ck::CKA_CLASS,
    ck::CKA_KEY_TYPE,
    ck::CKA_LABEL,
    ck::CKA_ID,
    ck::CKA_TOKEN,
    ck::CKA_PRIVATE,
    ck::CKA_SENSITIVE,
    ck::CKA_EXTRACTABLE,
    ck::CKA_ALWAYS_SENSITIVE,
    ck::CKA_NEVER_EXTRACTABLE,
    ck::CKA_LOCAL,
    ck::CKA_MODIFIABLE,
    ck::CKA_SIGN,
    ck::CKA_VERIFY,
    ck::CKA_ENCRYPT,
    ck::CKA_DECRYPT,
    ck::CKA_WRAP,
    ck::CKA_UNWRAP,
    ck::CKA_DERIVE,
    ck::CKA_MODULUS_BITS,
    ck::CKA_VALUE_LEN,
    ck::CKA_EC_PARAMS,
    ck::CKA_EC_POINT,
    ck::CKA_MODULUS,
    ck::CKA_VALUE,
];

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let needs_login = !matches!(
        args.command,
        KeysCommand::Random { .. } | KeysCommand::Digest { .. }
    );
    let s = Session::open(&args, needs_login).await?;
    let partition = s.partition.clone();
    match &args.command {
        KeysCommand::Gen {
            key_type,
            label,
            id,
            extractable,
        } => {
            let id = hex_arg(id, "id")?;
            let (mechanism, first, private) = key_templates(key_type, label, &id, *extractable)?;
            let request = match private {
                Some(private_template) => Request::GenerateKeyPair {
                    partition,
                    mechanism,
                    public_template: first,
                    private_template,
                    op_id: new_op_id(),
                },
                None => Request::GenerateKey {
                    partition,
                    mechanism,
                    template: first,
                    op_id: new_op_id(),
                },
            };
            match s.conn.call(request).await? {
                Response::KeyPair { public, private } => {
                    println!("generated {key_type} key pair '{label}'");
                    println!("  public key:  {public}");
                    println!("  private key: {private}");
                }
                Response::Object(o) => println!("generated {key_type} key '{label}': {o}"),
                other => bail!("unexpected answer {other:?}"),
            }
        }
        KeysCommand::List => {
            let objects = s.find(Template::new()).await?;
            println!(
                "{:<32}  {:<12} {:<15} {:<24} id",
                "object id", "class", "type", "label"
            );
            for o in &objects {
                let attrs = s
                    .attributes(
                        *o,
                        vec![ck::CKA_CLASS, ck::CKA_KEY_TYPE, ck::CKA_LABEL, ck::CKA_ID],
                    )
                    .await?;
                let get = |a: u64| match attrs.iter().find(|(t, _)| *t == a) {
                    Some((_, AttrResult::Value(v))) => show_value(a, v),
                    _ => "-".into(),
                };
                println!(
                    "{:<32}  {:<12} {:<15} {:<24} {}",
                    o,
                    get(ck::CKA_CLASS),
                    get(ck::CKA_KEY_TYPE),
                    get(ck::CKA_LABEL),
                    get(ck::CKA_ID)
                );
            }
            println!("{} object(s)", objects.len());
        }
        KeysCommand::Show(sel) => {
            let object = s.select(sel, None).await?;
            for (attr, result) in s.attributes(object, SHOWN.to_vec()).await? {
                match result {
                    AttrResult::Value(v) => {
                        println!("{:<18} {}", attr_name(attr), show_value(attr, &v))
                    }
                    AttrResult::Sensitive => println!("{:<18} (sensitive)", attr_name(attr)),
                    AttrResult::Invalid => {}
                }
            }
        }
        KeysCommand::SetAttr { sel, sets } => {
            let object = s.select(sel, None).await?;
            let mut template = Template::new();
            for item in sets {
                let (a, v) = parse_set(item)?;
                template.set(a, v);
            }
            s.conn
                .call(Request::SetAttributes {
                    partition,
                    object,
                    template,
                    op_id: new_op_id(),
                })
                .await?;
            println!("attributes of {object} changed");
        }
        KeysCommand::Delete { sel } => {
            let object = s.select(sel, None).await?;
            s.conn
                .call(Request::DestroyObject {
                    partition,
                    object,
                    op_id: new_op_id(),
                })
                .await?;
            println!("destroyed {object}");
        }
        KeysCommand::Import { file, label, id } => {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let block =
                pem::parse(text.as_bytes()).map_err(|e| anyhow!("{} is not PEM: {e}", file.display()))?;
            if !block.tag().ends_with("PRIVATE KEY") {
                bail!("{} holds a '{}', not a private key", file.display(), block.tag());
            }
            let template = Template::new()
                .with(ck::CKA_TOKEN, AttrValue::Bool(true))
                .with(ck::CKA_LABEL, AttrValue::Bytes(label.as_bytes().to_vec()))
                .with(ck::CKA_ID, AttrValue::Bytes(hex_arg(id, "id")?));
            let der = Secret::new(block.into_contents());
            match s
                .conn
                .call(Request::ImportKeyPair {
                    partition,
                    private_key_der: der,
                    template,
                    op_id: new_op_id(),
                })
                .await?
            {
                Response::KeyPair { public, private } => {
                    println!("imported '{label}'");
                    println!("  public key:  {public}");
                    println!("  private key: {private}");
                }
                other => bail!("unexpected answer {other:?}"),
            }
        }
        KeysCommand::Pubkey { sel, out } => {
            let object = s.select(sel, Some(ck::CKO_PUBLIC_KEY)).await?;
            let spki = match s.attributes(object, vec![ck::CKA_PUBLIC_KEY_INFO]).await?.pop() {
                Some((_, AttrResult::Value(AttrValue::Bytes(b)))) => b,
                _ => bail!("object {object} has no public key info"),
            };
            let text = pem::encode(&pem::Pem::new("PUBLIC KEY", spki));
            write_output(out, text.as_bytes())?;
        }
        KeysCommand::Sign { sel, mech, io } => {
            let mechanism = mechanism_of(mech)?;
            let key = s.select_key(sel, mechanism.mech, true).await?;
            let data = read_input(&io.input)?;
            let sig = s
                .bytes(Request::Sign {
                    partition,
                    key,
                    mechanism,
                    data,
                })
                .await?;
            write_output(&io.out, &sig)?;
        }
        KeysCommand::Verify {
            sel,
            mech,
            input,
            signature,
        } => {
            let mechanism = mechanism_of(mech)?;
            let key = s.select_key(sel, mechanism.mech, false).await?;
            let data = read_input(input)?;
            let signature =
                std::fs::read(signature).with_context(|| format!("cannot read {}", signature.display()))?;
            s.conn
                .call(Request::Verify {
                    partition,
                    key,
                    mechanism,
                    data,
                    signature,
                })
                .await?;
            println!("signature verified");
        }
        KeysCommand::Encrypt { sel, mech, io } => {
            let mechanism = mechanism_of(mech)?;
            let key = s.select_key(sel, mechanism.mech, false).await?;
            let data = read_input(&io.input)?;
            write_output(
                &io.out,
                &s.bytes(Request::Encrypt {
                    partition,
                    key,
                    mechanism,
                    data,
                })
                .await?,
            )?;
        }
        KeysCommand::Decrypt { sel, mech, io } => {
            let mechanism = mechanism_of(mech)?;
            let key = s.select_key(sel, mechanism.mech, true).await?;
            let data = read_input(&io.input)?;
            write_output(
                &io.out,
                &s.bytes(Request::Decrypt {
                    partition,
                    key,
                    mechanism,
                    data,
                })
                .await?,
            )?;
        }
        KeysCommand::Random { bytes, out } => {
            write_output(out, &s.bytes(Request::GenerateRandom { len: *bytes }).await?)?;
        }
        KeysCommand::Digest { mech, io } => {
            let m = mechanism::by_name(mech).ok_or_else(|| anyhow!("unknown digest '{mech}'"))?;
            let data = read_input(&io.input)?;
            let digest = s
                .bytes(Request::Digest {
                    partition,
                    mechanism: Mechanism::new(m),
                    data,
                })
                .await?;
            println!("{}", hex::encode(digest));
        }
    }
    Ok(())
}

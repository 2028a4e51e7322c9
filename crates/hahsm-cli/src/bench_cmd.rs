//! `hahsm bench`: signatures per second through the PKCS#11 module, loaded as
//! any application loads it, against aws-lc-rs signing in this process on the
//! same number of threads. The ratio says what the module, the network and
//! the member cost over the raw crypto on this CPU (report table 4.5's
//! yardstick, in our setting where members share the machine).
use anyhow::{anyhow, bail, Context, Result};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The PKCS#11 module [default: libhahsm_pkcs11.so next to this program]
    #[arg(long)]
    module: Option<PathBuf>,
    /// Application threads, each with its own session.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The partition (token label); the first slot if not given.
    #[arg(long, env = "HAHSM_PARTITION")]
    partition: Option<String>,
    /// The user PIN.
    #[arg(long, env = "HAHSM_PIN", hide_env_values = true)]
    pin: String,
    #[command(flatten)]
    conf: crate::ConfArg,
}

/// What one measurement signs: the same 32 bytes every time.
const MESSAGE: &[u8] = b"hahsm bench: 32 bytes of data..";

pub async fn run(args: BenchArgs) -> Result<()> {
    // The module and the signing threads block: keep them off the async runtime.
    tokio::task::spawn_blocking(move || bench(args)).await?
}

fn bench(args: BenchArgs) -> Result<()> {
    if args.threads == 0 || args.seconds == 0 {
        bail!("--threads and --seconds must be at least 1");
    }
    if args.conf.conf.is_some() {
        std::env::set_var(hahsm_client::config::ENV_VAR, args.conf.path());
    }
    let module = match &args.module {
        Some(m) => m.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("cannot locate the module"))?
            .join("libhahsm_pkcs11.so"),
    };
    let p11 = Pkcs11::new(&module).with_context(|| format!("loading {}", module.display()))?;
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .context("C_Initialize (see the module's log)")?;
    let slots = p11.get_slots_with_token()?;
    let slot = match &args.partition {
        None => *slots.first().ok_or_else(|| anyhow!("the module shows no slot"))?,
        Some(name) => *slots
            .iter()
            .find(|s| p11.get_token_info(**s).is_ok_and(|t| t.label() == name))
            .ok_or_else(|| anyhow!("no slot for partition '{name}'"))?,
    };
    let pin = AuthPin::new(args.pin.clone().into());
    let setup = p11.open_rw_session(slot)?;
    setup.login(UserType::User, Some(&pin)).context("C_Login")?;
    let duration = Duration::from_secs(args.seconds);
    println!(
        "hahsm bench: {} threads, {} s per measurement, module {}",
        args.threads,
        args.seconds,
        module.display()
    );
    println!(
        "{:<12} {:>16} {:>16} {:>8}",
        "key", "module sig/s", "aws-lc-rs sig/s", "ratio"
    );

    // RSA-2048, PKCS#1 v1.5 with SHA-256.
    let (_, rsa) = setup.generate_key_pair(
        &Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::Token(false),
            Attribute::ModulusBits(2048.into()),
            Attribute::Verify(true),
        ],
        &[Attribute::Token(false), Attribute::Sign(true)],
    )?;
    let through_module = module_rate(
        &p11,
        slot,
        rsa,
        || Mechanism::Sha256RsaPkcs,
        args.threads,
        duration,
    )?;
    let local = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| anyhow!("aws-lc-rs RSA key generation failed"))?;
    let raw = local_rate(args.threads, duration, || {
        let mut sig = vec![0u8; local.public_modulus_len()];
        local
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), MESSAGE, &mut sig)
            .is_ok()
    });
    report("RSA-2048", through_module, raw);

    // P-256, ECDSA with SHA-256.
    let (_, ec) = setup.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(false),
            Attribute::Verify(true),
            Attribute::EcParams(vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
        ],
        &[Attribute::Token(false), Attribute::Sign(true)],
    )?;
    let through_module = module_rate(&p11, slot, ec, || Mechanism::EcdsaSha256, args.threads, duration)?;
    let local = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .map_err(|_| anyhow!("aws-lc-rs EC key generation failed"))?;
    let _ = local.public_key();
    let raw = local_rate(args.threads, duration, || {
        local.sign(&SystemRandom::new(), MESSAGE).is_ok()
    });
    report("P-256", through_module, raw);
    drop(setup);
    p11.finalize()?;
    Ok(())
}

fn report(name: &str, module: f64, raw: f64) {
    let ratio = if raw > 0.0 { module / raw } else { 0.0 };
    println!("{name:<12} {module:>16.0} {raw:>16.0} {ratio:>8.2}");
}

/// Signatures per second with `threads` threads, each on its own session.
fn module_rate(
    p11: &Pkcs11,
    slot: cryptoki::slot::Slot,
    key: ObjectHandle,
    mech: fn() -> Mechanism<'static>,
    threads: usize,
    duration: Duration,
) -> Result<f64> {
    // Warm up: the member parses and caches the key on first use.
    p11.open_ro_session(slot)?.sign(&mech(), key, MESSAGE)?;
    let count = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let ready = std::sync::Barrier::new(threads + 1);
    let go = std::sync::Barrier::new(threads + 1);
    let start = std::sync::Mutex::new(Instant::now());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (count, failed, ready, go, start) = (&count, &failed, &ready, &go, &start);
            scope.spawn(move || {
                let session = p11.open_ro_session(slot);
                ready.wait();
                go.wait();
                let Ok(session) = session else {
                    failed.store(true, Ordering::Relaxed);
                    return;
                };
                let (m, begin) = (mech(), *start.lock().unwrap_or_else(|p| p.into_inner()));
                while begin.elapsed() < duration && !failed.load(Ordering::Relaxed) {
                    match session.sign(&m, key, MESSAGE) {
                        Ok(_) => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("hahsm bench: signing failed: {e}");
                            failed.store(true, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        ready.wait();
        *start.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        go.wait();
    });
    if failed.load(Ordering::Relaxed) {
        bail!("signing through the module failed");
    }
    let begin = *start.lock().unwrap_or_else(|p| p.into_inner());
    Ok(count.load(Ordering::Relaxed) as f64 / begin.elapsed().as_secs_f64())
}

/// Operations per second of `op` on `threads` threads in this process.
fn local_rate(threads: usize, duration: Duration, op: impl Fn() -> bool + Sync) -> f64 {
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while start.elapsed() < duration {
                    if op() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

//! The `softhsm` baseline: SoftHSM2 (Debian's `softhsm2`), in a token of its
//! own in a temporary directory, so the user's SoftHSM tokens are not touched.
use anyhow::{Context, Result};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use std::path::{Path, PathBuf};

/// Where Debian installs the module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const TOKEN_LABEL: &str = "hahsm-bench";
/// A throw-away token's PINs: the token lives only as long as the bench.
pub const USER_PIN: &str = "bench-user-1234";
const SO_PIN: &str = "bench-so-5678";

/// The temporary token; removed when dropped.
pub struct SoftHsm {
    _dir: tempfile::TempDir,
}

/// The module path if SoftHSM2 is installed.
pub fn installed() -> Option<PathBuf> {
    let p = Path::new(MODULE);
    p.exists().then(|| p.to_path_buf())
}

impl SoftHsm {
    /// Writes a config for a fresh token directory, points `SOFTHSM2_CONF` at
    /// it (for this process and the workers it starts) and initialises one
    /// token with a user PIN. Call it before any thread is started: it sets
    /// an environment variable.
    pub fn setup(module: PathBuf) -> Result<SoftHsm> {
        let dir = tempfile::Builder::new().prefix("hahsm-bench-softhsm").tempdir()?;
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens)?;
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )?;
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let p11 = Pkcs11::new(&module).with_context(|| format!("loading {}", module.display()))?;
        p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
        let so_pin = AuthPin::new(SO_PIN.into());
        // A fresh SoftHSM2 shows one slot, with an uninitialised token.
        let free = *p11.get_all_slots()?.first().context("SoftHSM2 shows no slot")?;
        p11.init_token(free, &so_pin, TOKEN_LABEL)
            .context("SoftHSM2: C_InitToken")?;
        // SoftHSM2 renumbers its slots after C_InitToken: look the token up again.
        let slot = p11
            .get_slots_with_initialized_token()?
            .into_iter()
            .find(|s| {
                p11.get_token_info(*s)
                    .is_ok_and(|t| t.label().trim() == TOKEN_LABEL)
            })
            .context("SoftHSM2 lost the token it initialised")?;
        {
            let session = p11.open_rw_session(slot)?;
            session.login(UserType::So, Some(&so_pin))?;
            session.init_pin(&AuthPin::new(USER_PIN.into()))?;
        }
        p11.finalize()?;
        Ok(SoftHsm { _dir: dir })
    }
}

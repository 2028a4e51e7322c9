//! p11-kit (issue 15, item 6): with the packaged module file registered
//! system-wide (in `/etc/pkcs11/modules`, naming the built module by its
//! path, for the length of the test: p11-kit reads no user configuration
//! when it runs as root, as the tests do), `p11-kit list-modules` shows the
//! HA group's token, and GnuTLS's `p11tool` finds the token and lists its
//! keys with no `--provider`, also with a member killed.
mod t20_pkcs11_support;
use hahsm_it::cluster::{Cluster, GROUP, PIN};
use hahsm_it::Run;
use std::path::Path;
use std::process::Command;
use t20_pkcs11_support::module_path;

const REGISTERED: &str = "/etc/pkcs11/modules/hahsm-t29.module";

/// The registration, removed when the test ends, passes or not.
struct Registered;

impl Registered {
    fn write(file: &str) -> Registered {
        std::fs::create_dir_all("/etc/pkcs11/modules").unwrap();
        std::fs::write(REGISTERED, file).unwrap();
        Registered
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(REGISTERED);
    }
}

/// Runs a p11-kit or GnuTLS program, with the PIN for p11tool.
fn p11(program: &str, args: &[&str]) -> Run {
    hahsm_it::run_command(Command::new(program).args(args).env("GNUTLS_PIN", PIN))
}

#[test]
fn p11_kit_and_p11tool_find_the_ha_token_without_naming_the_module() {
    let mut c = Cluster::new(3);
    c.ha_only_conf(None);

    // The packaged module file, with the module named by its path.
    let packaged =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/hahsm.module"))
            .unwrap();
    let module = module_path();
    let file = packaged.replace(
        "module: libhahsm_pkcs11.so",
        &format!("module: {}", module.display()),
    );
    assert!(
        file.contains(&module.display().to_string()),
        "the module line moved"
    );
    let _registered = Registered::write(&file);

    let list = p11("p11-kit", &["list-modules"]);
    assert!(list.ok, "p11-kit list-modules: {}", list.stderr);
    assert!(
        list.stdout.contains("hahsm-t29:") && list.stdout.contains(&format!("token: {GROUP}")),
        "p11-kit does not show the HA group's token:\n{}",
        list.stdout
    );

    let keygen = hahsm_it::run(
        "pkcs11-tool",
        &[
            "--module",
            module.to_str().unwrap(),
            "--login",
            "--pin",
            PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "t29-key",
            "--id",
            "29",
        ],
    );
    assert!(keygen.ok, "pkcs11-tool --keypairgen: {}", keygen.stderr);

    for down in [None, Some(1)] {
        if let Some(i) = down {
            c.members[i].kill9();
        }
        let tokens = p11("p11tool", &["--list-tokens"]);
        assert!(
            tokens.ok && tokens.stdout.contains(&format!("token={GROUP}")),
            "p11tool --list-tokens (member down: {down:?}) does not find the token:\n{}{}",
            tokens.stdout,
            tokens.stderr
        );
        let url = format!("pkcs11:token={GROUP}");
        let keys = p11("p11tool", &["--login", "--list-privkeys", &url]);
        assert!(
            keys.ok && keys.stdout.contains("t29-key"),
            "p11tool --list-privkeys (member down: {down:?}) does not list the key:\n{}{}",
            keys.stdout,
            keys.stderr
        );
    }
}

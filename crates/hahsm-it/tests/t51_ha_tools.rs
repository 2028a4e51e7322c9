//! Report test 3.4.3 with third-party applications: OpenSC's pkcs11-tool,
//! OpenSSL (through the libp11 engine) and python-pkcs11 sign through the HA slot while one
//! member is dead, and across a failover the test forces by stopping
//! (SIGSTOP) the member the module tries first. Each run is a new process
//! that knows nothing of the faults; every signature is checked by plain
//! openssl.
mod t20_pkcs11_support;

use hahsm_it::cluster::{Cluster, GROUP, PIN};
use hahsm_it::run;
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::Duration;
use t20_pkcs11_support::{ecdsa_der, module_path, tool};

const LIMIT: Duration = Duration::from_secs(120);

struct Env {
    c: Cluster,
    module: String,
    conf: PathBuf,
    ha_log: PathBuf,
    pkcs11_log: PathBuf,
    openssl_conf: PathBuf,
}

impl Env {
    fn path(&self, name: &str) -> String {
        self.c.work.path().join(name).to_str().expect("utf-8").to_string()
    }

    fn ha_log(&self) -> String {
        std::fs::read_to_string(&self.ha_log).unwrap_or_default()
    }

    /// Runs a program with the module's environment; panics with its output
    /// and the module's log when it fails.
    #[track_caller]
    fn ok(&self, program: &str, args: &[&str]) -> String {
        let envs: Vec<(&str, &Path)> = vec![
            ("HAHSM_CONF", &self.conf),
            ("HAHSM_PKCS11_LOG", &self.pkcs11_log),
            ("HAHSM_HA_LOG", &self.ha_log),
            ("OPENSSL_CONF", &self.openssl_conf),
        ];
        let (ok, out, err) = tool(program, args, &envs, LIMIT);
        assert!(
            ok,
            "{program} {args:?} failed\nstdout:\n{out}\nstderr:\n{err}\nmodule log:\n{}\nHA log:\n{}",
            std::fs::read_to_string(&self.pkcs11_log).unwrap_or_default(),
            self.ha_log()
        );
        out
    }

    fn pkcs11_tool(&self, args: &[&str]) -> String {
        let mut full = vec![
            "--module",
            &self.module,
            "--token-label",
            GROUP,
            "--login",
            "--pin",
            PIN,
        ];
        full.extend_from_slice(args);
        self.ok("pkcs11-tool", &full)
    }

    /// pkcs11-tool signs `data` with the HA key; plain openssl verifies it.
    fn pkcs11_tool_signs(&self, data: &str, tag: &str) {
        let sig = self.path(&format!("{tag}.sig"));
        self.pkcs11_tool(&[
            "--sign",
            "--mechanism",
            "ECDSA-SHA256",
            // pkcs11-tool picks the key to sign with by --id; it ignores
            // --label there and would take the first private key it finds.
            "--id",
            "51",
            "--input-file",
            data,
            "--output-file",
            &sig,
        ]);
        let der = self.path(&format!("{tag}.sig.der"));
        std::fs::write(&der, ecdsa_der(&std::fs::read(&sig).unwrap())).unwrap();
        let pubkey = self.path("ha-tool.pub.der");
        let v = run(
            "openssl",
            &[
                "dgst",
                "-sha256",
                "-verify",
                &pubkey,
                "-keyform",
                "DER",
                "-signature",
                &der,
                data,
            ],
        );
        assert!(v.ok, "openssl verify ({tag}): {} {}", v.stdout, v.stderr);
    }

    /// OpenSSL signs `data` through the libp11 engine; plain openssl verifies it.
    fn openssl_signs(&self, data: &str, tag: &str) {
        let sig = self.path(&format!("{tag}.ossl.sig"));
        let uri = format!("pkcs11:token={GROUP};object=ha-tool;type=private");
        self.ok(
            "openssl",
            &[
                "pkeyutl", "-engine", "pkcs11", "-keyform", "engine", "-sign", "-inkey", &uri, "-in", data,
                "-out", &sig,
            ],
        );
        let pubkey = self.path("ha-tool.pub.der");
        let v = run(
            "openssl",
            &[
                "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", &pubkey, "-in", data,
                "-sigfile", &sig,
            ],
        );
        assert!(
            v.ok && v.stdout.contains("Success"),
            "openssl verify ({tag}): {} {}",
            v.stdout,
            v.stderr
        );
    }
}

impl Env {
    /// python-pkcs11 makes an RSA key and an AES key through the HA slot and
    /// signs; plain openssl verifies the signature with the exported key.
    fn python_pkcs11_signs(&self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/ha_sign.py");
        let out_dir = self.path("");
        let out = self.ok("python3", &[script, &self.module, GROUP, PIN, &out_dir]);
        assert!(out.contains("python-pkcs11 ok"), "{out}");
        let pem = self.path("py-rsa.pub.pem");
        let v = run(
            "openssl",
            &[
                "rsa",
                "-RSAPublicKey_in",
                "-inform",
                "DER",
                "-in",
                &self.path("py-rsa.pub.der"),
                "-pubout",
                "-out",
                &pem,
            ],
        );
        assert!(v.ok, "{}", v.stderr);
        let v = run(
            "openssl",
            &[
                "dgst",
                "-sha256",
                "-verify",
                &pem,
                "-signature",
                &self.path("py-rsa.sig"),
                &self.path("py-data.bin"),
            ],
        );
        assert!(v.ok, "openssl verify (python-pkcs11): {} {}", v.stdout, v.stderr);
    }
}

fn setup() -> Env {
    let c = Cluster::new(3);
    // HA only, with short deadlines so that a stopped member costs little.
    let text = std::fs::read_to_string(&c.conf).unwrap();
    let text = text
        .lines()
        .map(|l| match l.split('=').next().map(str::trim) {
            Some("request_timeout_ms") => "request_timeout_ms = 1500".to_string(),
            Some("handshake_timeout_ms") => "handshake_timeout_ms = 1000".to_string(),
            Some("connect_timeout_ms") => "connect_timeout_ms = 1000".to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let conf = c.work.path().join("client/ha-tools.toml");
    std::fs::write(&conf, format!("ha_only = true\n{text}\n")).unwrap();
    let module = module_path().to_str().expect("utf-8").to_string();
    let openssl_conf = c.work.path().join("openssl-p11.cnf");
    std::fs::write(
        &openssl_conf,
        format!(
            "openssl_conf = conf\n[conf]\nengines = engines\n[engines]\npkcs11 = pkcs11\n\
             [pkcs11]\nengine_id = pkcs11\nMODULE_PATH = {module}\nPIN = {PIN}\ninit = 0\n"
        ),
    )
    .unwrap();
    Env {
        ha_log: c.work.path().join("ha.log"),
        pkcs11_log: c.work.path().join("pkcs11.log"),
        c,
        module,
        conf,
        openssl_conf,
    }
}

#[test]
fn pkcs11_tool_and_openssl_sign_through_the_ha_slot_across_failures() {
    let mut env = setup();
    let data = env.path("ha-data.bin");
    std::fs::write(&data, [0x5a; 32]).unwrap();

    // The HA slot is the only one, labelled as the group.
    let slots = env.ok("pkcs11-tool", &["--module", &env.module, "-L"]);
    assert!(slots.contains(GROUP), "{slots}");
    env.pkcs11_tool(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "ha-tool",
        "--id",
        "51",
    ]);
    env.pkcs11_tool(&[
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        "ha-tool",
        "--output-file",
        &env.path("ha-tool.pub.der"),
    ]);
    env.pkcs11_tool_signs(&data, "all-up");

    // A member down: member 1 is killed.
    env.c.members[1].kill9();
    env.pkcs11_tool_signs(&data, "one-dead");
    env.openssl_signs(&data, "one-dead");
    env.python_pkcs11_signs();

    // A forced failover: member 0, the first the module tries, stops
    // answering with its sockets open. Each new process finds it out within
    // a deadline, drops it, and signs on member 2.
    let member0 = format!("has dropped member: {}", env.c.serials[0]);
    assert_eq!(env.ha_log().matches(&member0).count(), 0, "{}", env.ha_log());
    env.c.members[0].signal(Signal::SIGSTOP);
    env.pkcs11_tool_signs(&data, "failover");
    env.openssl_signs(&data, "failover");
    env.c.members[0].signal(Signal::SIGCONT);
    let dropped = env.ha_log().matches(&member0).count();
    assert!(
        dropped >= 2,
        "each program should have dropped the stopped member 0 ({dropped} times):\n{}",
        env.ha_log()
    );
    let log = std::fs::read_to_string(&env.pkcs11_log).unwrap_or_default();
    assert!(!log.contains(PIN), "the PIN reached the module's log");
}

/// Issue 19: the key-pair templates pkcs11-tool sends with every usage flag
/// it has (`CKA_DERIVE` on both halves of an EC pair, the Edwards curve named
/// by a PrintableString in `CKA_EC_PARAMS`) are accepted through the HA slot,
/// for P-256, P-384 and Ed25519, and the keys sign; `pkcs11-tool --derive`
/// (ECDH1 with its template for the derived key) agrees with openssl.
#[test]
fn pkcs11_tool_makes_ec_and_ed25519_pairs_with_every_usage_through_the_ha_slot() {
    let env = setup();
    let data = env.path("usage-data.bin");
    std::fs::write(&data, [0x19; 32]).unwrap();
    for (key_type, id, mechanism) in [
        ("EC:prime256v1", "61", "ECDSA-SHA256"),
        ("EC:secp384r1", "62", "ECDSA-SHA384"),
        ("EC:edwards25519", "63", "EDDSA"),
    ] {
        let label = format!("t51-usage-{id}");
        env.pkcs11_tool(&[
            "--keypairgen",
            "--key-type",
            key_type,
            "--label",
            &label,
            "--id",
            id,
            "--usage-sign",
            "--usage-decrypt",
            "--usage-derive",
            "--usage-wrap",
        ]);
        let sig = env.path(&format!("usage-{id}.sig"));
        env.pkcs11_tool(&[
            "--sign",
            "--mechanism",
            mechanism,
            "--id",
            id,
            "--input-file",
            &data,
            "--output-file",
            &sig,
        ]);
        assert!(
            !std::fs::read(&sig).unwrap().is_empty(),
            "{key_type}: empty signature"
        );
    }
    let listed = env.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    for id in ["61", "62", "63"] {
        assert!(listed.contains(&format!("t51-usage-{id}")), "{listed}");
    }

    // ECDH with the template pkcs11-tool sends for the derived key (a session
    // generic secret, not sensitive, extractable, with every usage flag): the
    // secret it reads back is the one openssl agrees on with the peer.
    let (peer, peer_pub) = (env.path("peer.pem"), env.path("peer.pub.der"));
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &peer,
        ],
        vec![
            "pkey", "-in", &peer, "-pubout", "-outform", "DER", "-out", &peer_pub,
        ],
    ] {
        let r = run("openssl", &args);
        assert!(r.ok, "openssl {args:?}: {}", r.stderr);
    }
    let ours = env.path("usage-61.pub.der");
    env.pkcs11_tool(&[
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        "61",
        "--output-file",
        &ours,
    ]);
    let z = env.path("ecdh.bin");
    env.pkcs11_tool(&[
        "--derive",
        "--mechanism",
        "ECDH1-DERIVE",
        "--id",
        "61",
        "--input-file",
        &peer_pub,
        "--output-file",
        &z,
    ]);
    let (ours_pem, z_openssl) = (env.path("usage-61.pub.pem"), env.path("ecdh.openssl.bin"));
    for args in [
        vec![
            "pkey", "-pubin", "-inform", "DER", "-in", &ours, "-out", &ours_pem,
        ],
        vec![
            "pkeyutl", "-derive", "-inkey", &peer, "-peerkey", &ours_pem, "-out", &z_openssl,
        ],
    ] {
        let r = run("openssl", &args);
        assert!(r.ok, "openssl {args:?}: {}", r.stderr);
    }
    let (got, want) = (std::fs::read(&z).unwrap(), std::fs::read(&z_openssl).unwrap());
    assert_eq!(got.len(), 32, "the P-256 shared secret is 32 bytes");
    assert!(
        got == want,
        "pkcs11-tool's ECDH secret is not the one openssl derives"
    );
}

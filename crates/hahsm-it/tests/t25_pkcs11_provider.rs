//! Issue 19 with OpenSSL 3's own PKCS#11 client, pkcs11-provider (latchset;
//! Debian's `pkcs11-provider`, from bookworm-backports on bookworm, which
//! scripts/test-deps.sh installs): through the HA slot of a three-member
//! group, the provider's key generation makes EC P-256, Ed25519 and RSA-2048
//! pairs with the templates it sends; each key signs through the provider,
//! and plain openssl (no provider, no engine) verifies the signature with the
//! public key the provider exports. pkcs11-tool lists the keys under the
//! labels asked for. Then a member is killed, and the provider signs again
//! with each key: every openssl run is a new process that knows nothing of
//! the fault.
mod t20_pkcs11_support;

use hahsm_it::cluster::{Cluster, GROUP, PIN};
use std::path::{Path, PathBuf};
use std::time::Duration;
use t20_pkcs11_support::{module_path, tool};

const LIMIT: Duration = Duration::from_secs(120);

/// The keys the test makes: object label, openssl's algorithm and its key
/// generation options, what `openssl pkey -text` says of the public key, and
/// pkcs11-tool's name for the key type.
struct Key {
    label: &'static str,
    algorithm: &'static str,
    options: &'static [&'static str],
    text: &'static str,
    tool_type: &'static str,
}

const KEYS: [Key; 3] = [
    Key {
        label: "t25-ec-p256",
        algorithm: "EC",
        options: &["ec_paramgen_curve:P-256"],
        text: "ASN1 OID: prime256v1",
        tool_type: "EC",
    },
    Key {
        label: "t25-ed25519",
        algorithm: "ED25519",
        options: &[],
        text: "ED25519 Public-Key",
        tool_type: "EC_EDWARDS",
    },
    Key {
        label: "t25-rsa-2048",
        algorithm: "RSA",
        options: &["rsa_keygen_bits:2048"],
        text: "Public-Key: (2048 bit)",
        tool_type: "RSA",
    },
];

/// Where Debian installs the provider (`/usr/lib/<triplet>/ossl-modules/`).
fn provider_path() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("ossl-modules/pkcs11.so"))
        .find(|p| p.exists());
    found.expect("pkcs11-provider is not installed (scripts/test-deps.sh installs it)")
}

struct Env {
    c: Cluster,
    module: String,
    conf: PathBuf,
    ha_log: PathBuf,
    pkcs11_log: PathBuf,
    openssl_conf: PathBuf,
    /// An openssl.cnf that loads nothing: plain openssl, whatever the
    /// machine's own configuration loads.
    plain_conf: PathBuf,
}

impl Env {
    fn path(&self, name: &str) -> String {
        self.c.work.path().join(name).to_str().expect("utf-8").to_string()
    }

    fn ha_log(&self) -> String {
        std::fs::read_to_string(&self.ha_log).unwrap_or_default()
    }

    /// Runs a program with the module's and the provider's environment;
    /// panics with its output and the module's log when it fails.
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

    /// Plain openssl, without the provider: (success, stdout and stderr).
    fn plain(&self, args: &[&str]) -> (bool, String) {
        let (ok, out, err) = tool("openssl", args, &[("OPENSSL_CONF", &self.plain_conf)], LIMIT);
        (ok, format!("{out}{err}"))
    }

    fn uri(label: &str, kind: &str) -> String {
        format!("pkcs11:token={GROUP};object={label};type={kind}")
    }

    /// The provider's own key generation: `openssl genpkey` with the
    /// provider's key manager, the key's URI as `pkcs11_uri`. The provider
    /// writes the private key as a PEM that holds its URI.
    fn provider_generates(&self, key: &Key) {
        let out = self.path(&format!("{}.uri.pem", key.label));
        let uri = format!("pkcs11_uri:pkcs11:token={GROUP};object={}", key.label);
        let mut args = vec![
            "genpkey",
            "-propquery",
            "provider=pkcs11",
            "-algorithm",
            key.algorithm,
        ];
        for o in key.options {
            args.extend(["-pkeyopt", o]);
        }
        args.extend(["-pkeyopt", &uri, "-out", &out]);
        self.ok("openssl", &args);
        let pem = std::fs::read_to_string(&out).unwrap();
        assert!(
            pem.contains("PKCS#11 PROVIDER URI"),
            "{}: genpkey wrote no provider URI:\n{pem}",
            key.label
        );
    }

    /// The provider exports the public key; plain openssl reads it and says
    /// it is of the kind asked for.
    fn provider_exports(&self, key: &Key) {
        let pem = self.path(&format!("{}.pub.pem", key.label));
        self.ok(
            "openssl",
            &[
                "pkey",
                "-pubin",
                "-in",
                &Self::uri(key.label, "public"),
                "-pubout",
                "-out",
                &pem,
            ],
        );
        let (ok, text) = self.plain(&["pkey", "-pubin", "-in", &pem, "-text", "-noout"]);
        assert!(ok && text.contains(key.text), "{}: {text}", key.label);
    }

    /// The provider signs `data` with the key; plain openssl verifies the
    /// signature with the exported public key, and refuses it for other data.
    fn provider_signs(&self, key: &Key, data: &str, tag: &str) {
        let sig = self.path(&format!("{}.{tag}.sig", key.label));
        let private = Self::uri(key.label, "private");
        let pem = self.path(&format!("{}.pub.pem", key.label));
        let other = self.path("other-data.bin");
        std::fs::write(&other, b"not the data that was signed").unwrap();
        let verify = |input: &str| -> (bool, String) {
            if key.algorithm == "ED25519" {
                self.plain(&[
                    "pkeyutl", "-verify", "-pubin", "-inkey", &pem, "-rawin", "-in", input, "-sigfile", &sig,
                ])
            } else {
                self.plain(&["dgst", "-sha256", "-verify", &pem, "-signature", &sig, input])
            }
        };
        if key.algorithm == "ED25519" {
            // EdDSA signs the message itself: pkeyutl -rawin.
            self.ok(
                "openssl",
                &[
                    "pkeyutl", "-sign", "-inkey", &private, "-rawin", "-in", data, "-out", &sig,
                ],
            );
        } else {
            self.ok(
                "openssl",
                &["dgst", "-sha256", "-sign", &private, "-out", &sig, data],
            );
        }
        let (ok, out) = verify(data);
        assert!(
            ok && (out.contains("Verified OK") || out.contains("Signature Verified Successfully")),
            "{} ({tag}): plain openssl does not verify the provider's signature: {out}",
            key.label
        );
        let (ok, out) = verify(&other);
        assert!(
            !ok,
            "{} ({tag}): plain openssl verifies the signature for other data: {out}",
            key.label
        );
    }
}

fn setup() -> Env {
    let c = Cluster::new(3);
    // HA only, with short deadlines so that a dead member costs little.
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
    let conf = c.work.path().join("client/provider.toml");
    std::fs::write(&conf, format!("ha_only = true\n{text}\n")).unwrap();
    let module = module_path().to_str().expect("utf-8").to_string();
    let pin_file = c.work.path().join("pin.txt");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    let openssl_conf = c.work.path().join("openssl-provider.cnf");
    // encode-provider-uri-to-pem: genpkey writes the private key as the
    // provider's URI PEM (without it, writing the key fails after the pair
    // is made, and genpkey's status says nothing).
    std::fs::write(
        &openssl_conf,
        format!(
            "openssl_conf = openssl_init\n[openssl_init]\nproviders = provider_sect\n\
             [provider_sect]\ndefault = default_sect\npkcs11 = pkcs11_sect\n\
             [default_sect]\nactivate = 1\n\
             [pkcs11_sect]\nmodule = {}\npkcs11-module-path = {module}\n\
             pkcs11-module-token-pin = file:{}\n\
             pkcs11-module-encode-provider-uri-to-pem = true\nactivate = 1\n",
            provider_path().display(),
            pin_file.display()
        ),
    )
    .unwrap();
    let plain_conf = c.work.path().join("openssl-plain.cnf");
    std::fs::write(&plain_conf, "").unwrap();
    Env {
        ha_log: c.work.path().join("ha.log"),
        pkcs11_log: c.work.path().join("pkcs11.log"),
        c,
        module,
        conf,
        openssl_conf,
        plain_conf,
    }
}

#[test]
fn pkcs11_provider_generates_and_signs_through_the_ha_slot_across_a_dead_member() {
    let mut env = setup();
    let data = env.path("data.bin");
    std::fs::write(&data, b"issue 19: pkcs11-provider through the HA slot").unwrap();

    for key in &KEYS {
        env.provider_generates(key);
        env.provider_exports(key);
        env.provider_signs(key, &data, "all-up");
    }

    // pkcs11-tool sees both halves of each pair, under the labels asked for.
    let listed = env.ok(
        "pkcs11-tool",
        &[
            "--module",
            &env.module,
            "--token-label",
            GROUP,
            "--login",
            "--pin",
            PIN,
            "--list-objects",
        ],
    );
    // One block per object: a header line ("Private Key Object; EC"), then
    // indented attributes ("  label:      t25-ec-p256").
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in listed.lines() {
        if line.starts_with(char::is_whitespace) {
            if let (Some(block), Some(label)) = (blocks.last_mut(), line.trim().strip_prefix("label:")) {
                block.1 = label.trim().to_string();
            }
        } else if !line.is_empty() {
            blocks.push((line.trim().to_string(), String::new()));
        }
    }
    for key in &KEYS {
        for class in ["Private Key Object", "Public Key Object"] {
            let header = format!("{class}; {}", key.tool_type);
            assert!(
                blocks
                    .iter()
                    .any(|(h, l)| (h == &header || h.starts_with(&format!("{header} "))) && l == key.label),
                "pkcs11-tool lists no {header} labelled {}:\n{listed}",
                key.label
            );
        }
    }

    // Member 0, the first the module tries, is killed; each openssl run
    // finds it out and signs on another member.
    let member0 = format!("has dropped member: {}", env.c.serials[0]);
    assert_eq!(env.ha_log().matches(&member0).count(), 0, "{}", env.ha_log());
    env.c.members[0].kill9();
    for key in &KEYS {
        env.provider_signs(key, &data, "member-0-dead");
    }
    assert!(
        env.ha_log().contains(&member0),
        "the provider's runs should have dropped the dead member 0:\n{}",
        env.ha_log()
    );
    let log = std::fs::read_to_string(&env.pkcs11_log).unwrap_or_default();
    assert!(!log.contains(PIN), "the PIN reached the module's log");
}

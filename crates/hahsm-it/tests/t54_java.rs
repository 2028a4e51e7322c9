//! Java (issue 15, item 4): OpenJDK 17's `keytool` and `jarsigner` (Debian's
//! openjdk-17, from `/usr/lib/jvm/java-17-openjdk-amd64`, named by path since
//! other JDKs may be installed beside it) use keys held in hahsm through the
//! SunPKCS11 provider and the HA slot of a three-member group:
//!
//! - `keytool -list -keystore NONE -storetype PKCS11` lists the token's
//!   entries (not with a wrong PIN); `keytool -genkeypair` makes an RSA-2048
//!   and an EC P-256 key on the token (pkcs11-tool then shows each private
//!   key generated on the token, `local`, with a certificate of the same
//!   `CKA_ID`, the one `keytool -exportcert` gives), and SunPKCS11 finds
//!   each certificate's `CKA_TRUSTED`;
//! - `jarsigner` signs a jar made by the JDK's `jar` with each key, and
//!   `jarsigner -verify -verbose -certs` (without the module) verifies it;
//!   independently of Java, `openssl cms -verify` checks the signature block
//!   over the `.SF` file against the certificate pkcs11-tool reads from the
//!   token, and the test checks the `.SF`'s digest of the manifest and the
//!   manifest's digests of the files;
//! - the same commands run with every member up; member 1 is killed
//!   (`kill -9`) in the middle of a jarsigner run, once its module has logged
//!   in there; the commands run with it dead (and a third key is made), then
//!   restarted; member 2 is stopped (SIGSTOP) the same way, and resumed. Not
//!   one Java command may fail.
//!
//! docs/integrations.md ("Java") copies its configuration from here.
mod t20_pkcs11_support;

use hahsm_it::cluster::{Cluster, GROUP, PIN};
use nix::sys::signal::Signal;
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use t20_pkcs11_support::module_path;

/// Debian's OpenJDK 17 (scripts/test-deps.sh installs it).
const JDK: &str = "/usr/lib/jvm/java-17-openjdk-amd64";
/// The name SunPKCS11 gives the provider: "SunPKCS11-" and the config's `name`.
const PROVIDER: &str = "SunPKCS11-hahsm";
const LIMIT: Duration = Duration::from_secs(120);
const RSA: &str = "t54-rsa";
const EC: &str = "t54-ec";
/// The key made while member 1 is dead.
const DOWN: &str = "t54-down";

/// A command's result: (success, stdout, stderr).
type Out = (bool, String, String);

struct Java {
    c: Cluster,
    dir: PathBuf,
    /// The SunPKCS11 configuration file.
    cfg: String,
    conf: PathBuf,
    module: String,
    /// Java commands run, and those that failed (with their output).
    ran: Cell<usize>,
    failures: RefCell<Vec<String>>,
}

/// Runs `program` in `cwd` (if given) with `envs`, under a time limit, so a
/// hanging program fails the test instead of hanging it.
fn run_in(cwd: Option<&Path>, program: &str, args: &[&str], envs: &[(&str, &Path)]) -> Out {
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=5")
        .arg(LIMIT.as_secs().to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn ok(r: Out, what: &str) -> String {
    assert!(r.0, "{what} failed\nstdout:\n{}\nstderr:\n{}", r.1, r.2);
    r.1
}

impl Java {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("utf-8").to_string()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn envs(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("HAHSM_CONF", self.conf.clone()),
            ("HAHSM_PKCS11_LOG", self.dir.join("pkcs11.log")),
            ("HAHSM_HA_LOG", self.dir.join("ha.log")),
        ]
    }

    /// One of the JDK's tools, with the module's environment, counted.
    fn jdk(&self, tool: &str, args: &[&str], cwd: Option<&Path>) -> Out {
        let program = format!("{JDK}/bin/{tool}");
        // English messages whatever the machine's locale: the test reads them.
        let mut all = vec!["-J-Duser.language=en", "-J-Duser.country=US"];
        all.extend_from_slice(args);
        let envs = self.envs();
        let envs: Vec<(&str, &Path)> = envs.iter().map(|(k, v)| (*k, v.as_path())).collect();
        self.ran.set(self.ran.get() + 1);
        run_in(cwd, &program, &all, &envs)
    }

    /// The options that open the token as a keystore through SunPKCS11.
    fn token(&self) -> Vec<&str> {
        vec![
            "-keystore",
            "NONE",
            "-storetype",
            "PKCS11",
            "-storepass",
            PIN,
            "-addprovider",
            "SunPKCS11",
            "-providerArg",
            &self.cfg,
        ]
    }

    /// Records a failed Java command of the fault phases.
    fn fail(&self, what: String) {
        eprintln!("t54: FAILED {what}");
        self.failures.borrow_mut().push(what);
    }

    /// `keytool -list`: the token's entries as (alias, entry type, SHA-256
    /// fingerprint).
    fn list(&self) -> Result<Vec<(String, String, String)>, String> {
        let mut args = vec!["-list"];
        args.extend(self.token());
        let (ok, out, err) = self.jdk("keytool", &args, None);
        if !ok {
            return Err(format!("keytool -list\n{out}\n{err}"));
        }
        // "alias, PrivateKeyEntry, " then "Certificate fingerprint (SHA-256): AB:…".
        let mut entries: Vec<(String, String, String)> = Vec::new();
        for line in out.lines() {
            if let Some(fp) = line.strip_prefix("Certificate fingerprint (SHA-256): ") {
                if let Some(last) = entries.last_mut() {
                    last.2 = fp.trim().to_string();
                }
            } else if let Some((alias, rest)) = line.split_once(", ") {
                let kind = rest.trim_end_matches([',', ' ']).to_string();
                entries.push((alias.to_string(), kind, String::new()));
            }
        }
        let count = format!("Your keystore contains {} entr", entries.len());
        if !out.contains(&count) {
            return Err(format!(
                "keytool -list: the count does not match the entries\n{out}"
            ));
        }
        Ok(entries)
    }

    /// `keytool -genkeypair` on the token: the key pair generated by the
    /// token (`-providerName`: with the provider given only to the
    /// keystore, keytool would generate the key in software and import it).
    fn genkeypair(&self, alias: &str, key: &[&str]) -> Result<(), String> {
        let dname = format!("CN={alias}");
        let mut args = vec![
            "-genkeypair",
            "-alias",
            alias,
            "-dname",
            &dname,
            "-validity",
            "30",
            "-providerName",
            PROVIDER,
        ];
        args.extend_from_slice(key);
        args.extend(self.token());
        let (ok, out, err) = self.jdk("keytool", &args, None);
        if ok {
            Ok(())
        } else {
            Err(format!("keytool -genkeypair {alias}\n{out}\n{err}"))
        }
    }

    /// `jarsigner` with the token's key `alias`: the signed jar's path.
    fn sign(&self, alias: &str, tag: &str) -> Result<String, String> {
        let signed = self.path(&format!("signed/{tag}-{alias}.jar"));
        let mut args = self.token();
        args.extend(["-signedjar", &signed]);
        let unsigned = self.path("app.jar");
        args.extend([unsigned.as_str(), alias]);
        let (ok, out, err) = self.jdk("jarsigner", &args, None);
        if ok && out.contains("jar signed.") {
            Ok(signed)
        } else {
            Err(format!("jarsigner {tag} {alias}\n{out}\n{err}"))
        }
    }

    /// `jarsigner -verify -verbose -certs`, without the module: the jar is
    /// verified, every file signed by `alias`'s certificate.
    fn verify(&self, signed: &str, alias: &str) -> Result<(), String> {
        let (ok, out, err) = self.jdk("jarsigner", &["-verify", "-verbose", "-certs", signed], None);
        let signer = format!("Signed by \"CN={alias}\"");
        // "sm" marks an entry both signed and in the manifest.
        let signed_entries = out.lines().filter(|l| l.trim_start().starts_with("sm ")).count();
        if ok && out.contains("jar verified.") && out.contains(&signer) && signed_entries == 2 {
            Ok(())
        } else {
            Err(format!(
                "jarsigner -verify {signed}: {signed_entries} signed entries\n{out}\n{err}"
            ))
        }
    }

    /// The signature checked without Java: openssl verifies the signature
    /// block over the `.SF` file with the token's certificate as the only
    /// signer allowed, and the digests chain the `.SF` to the manifest and
    /// the manifest to the files.
    fn check_without_java(&self, signed: &str, alias: &str, key_ext: &str) -> Result<(), String> {
        let x = PathBuf::from(format!("{signed}.x"));
        std::fs::create_dir_all(&x).unwrap();
        let (ok, out, err) = self.jdk("jar", &["xf", signed], Some(&x));
        if !ok {
            return Err(format!("jar xf {signed}\n{out}\n{err}"));
        }
        let meta = x.join("META-INF");
        let names: Vec<String> = std::fs::read_dir(&meta)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let stem = alias.to_uppercase();
        let sf = meta.join(format!("{stem}.SF"));
        let block = meta.join(format!("{stem}.{key_ext}"));
        if !sf.exists() || !block.exists() {
            return Err(format!(
                "{signed}: no {stem}.SF and {stem}.{key_ext} in {names:?}"
            ));
        }
        let cert = self.path(&format!("{alias}.token.pem"));
        let r = run_in(
            None,
            "openssl",
            &[
                "cms",
                "-verify",
                "-binary",
                "-inform",
                "DER",
                "-in",
                block.to_str().unwrap(),
                "-content",
                sf.to_str().unwrap(),
                "-nointern",
                "-certfile",
                &cert,
                "-CAfile",
                &cert,
                "-purpose",
                "any",
                "-out",
                "/dev/null",
            ],
            &[],
        );
        if !r.0 || !r.2.contains("Verification successful") {
            return Err(format!("openssl cms -verify {signed}\n{}\n{}", r.1, r.2));
        }
        let manifest = std::fs::read(meta.join("MANIFEST.MF")).unwrap();
        let sf_text = std::fs::read_to_string(&sf).unwrap();
        let want = format!("SHA-256-Digest-Manifest: {}", sha256_b64(&manifest));
        if !sf_text.lines().any(|l| l == want) {
            return Err(format!(
                "{signed}: the .SF does not name the manifest's digest {want}:\n{sf_text}"
            ));
        }
        let manifest = String::from_utf8(manifest).unwrap();
        for (name, content) in CONTENT {
            let entry = format!("Name: {name}\r\nSHA-256-Digest: {}\r\n", sha256_b64(content));
            if !manifest.contains(&entry) {
                return Err(format!("{signed}: the manifest lacks {entry:?}:\n{manifest}"));
            }
        }
        Ok(())
    }

    /// One round of Java commands in phase `tag`: the token's entries
    /// listed, then each key signs the jar and the signature is verified.
    fn round(&self, tag: &str, keys: &[(&str, &str)]) {
        match self.list() {
            Ok(entries) => {
                for (alias, _) in keys {
                    if !entries
                        .iter()
                        .any(|(a, kind, _)| a == alias && kind == "PrivateKeyEntry")
                    {
                        self.fail(format!("{tag}: keytool -list lacks {alias}: {entries:?}"));
                    }
                }
            }
            Err(e) => self.fail(format!("{tag}: {e}")),
        }
        for (alias, ext) in keys {
            let checked = self
                .sign(alias, tag)
                .and_then(|signed| self.verify(&signed, alias).map(|()| signed))
                .and_then(|signed| self.check_without_java(&signed, alias, ext));
            if let Err(e) = checked {
                self.fail(format!("{tag}: {e}"));
            }
        }
    }

    /// `jarsigner` with `alias`, with `signal` sent to member `i` as soon as
    /// the JVM's module has logged in there (the member logs it), so the
    /// fault lands in the middle of the command, with the member in use.
    fn sign_with_fault(&self, alias: &str, tag: &str, i: usize, signal: Signal) -> Result<String, String> {
        let (signed, fired) = self.c.members[i].signal_at_next_login(signal, || self.sign(alias, tag));
        assert!(fired, "{tag}: jarsigner never logged in on member {i}");
        eprintln!("t54: {signal:?} sent to member {i} once jarsigner had logged in there");
        signed
    }

    /// A round whose first signature meets `signal` sent to member `i`.
    fn round_with_fault(&self, tag: &str, keys: &[(&str, &str)], i: usize, signal: Signal) {
        let (alias, ext) = keys[0];
        let checked = self
            .sign_with_fault(alias, tag, i, signal)
            .and_then(|signed| self.verify(&signed, alias).map(|()| signed))
            .and_then(|signed| self.check_without_java(&signed, alias, ext));
        if let Err(e) = checked {
            self.fail(format!("{tag}: {e}"));
        }
        self.round(tag, &keys[1..]);
    }

    /// pkcs11-tool, through the same HA slot, logged in.
    fn pkcs11_tool(&self, args: &[&str]) -> String {
        let mut full = vec!["--module", &self.module, "--login", "--pin", PIN];
        full.extend_from_slice(args);
        let envs = self.envs();
        let mut envs: Vec<(&str, &Path)> = envs.iter().map(|(k, v)| (*k, v.as_path())).collect();
        envs.push(("OPENSSL_CONF", Path::new("/dev/null")));
        ok(run_in(None, "pkcs11-tool", &full, &envs), "pkcs11-tool")
    }

    /// The token's certificate for `alias`, read by pkcs11-tool (not Java),
    /// as `<alias>.token.pem`; checks that the private key beside it (the
    /// certificate's `CKA_ID`: SunPKCS11 labels only the certificate) was
    /// generated on the token.
    fn token_cert(&self, alias: &str, objects: &str) {
        // pkcs11-tool -O: a header line per object, its attributes indented.
        let mut blocks: Vec<String> = Vec::new();
        for line in objects.lines() {
            match blocks.last_mut() {
                Some(b) if line.starts_with(' ') => {
                    b.push('\n');
                    b.push_str(line.trim());
                }
                _ => blocks.push(line.to_string()),
            }
        }
        let field = |b: &str, name: &str| -> Option<String> {
            b.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let cert = blocks
            .iter()
            .find(|b| b.starts_with("Certificate Object") && field(b, "label:").as_deref() == Some(alias))
            .unwrap_or_else(|| panic!("pkcs11-tool -O: no certificate labelled {alias}:\n{objects}"));
        let id = field(cert, "ID:").unwrap_or_else(|| panic!("{alias}: no CKA_ID on {cert}"));
        let key = blocks
            .iter()
            .find(|b| b.starts_with("Private Key Object") && field(b, "ID:").as_deref() == Some(&id))
            .unwrap_or_else(|| panic!("pkcs11-tool -O: no private key with {alias}'s ID {id}:\n{objects}"));
        let access = field(key, "Access:").unwrap_or_default();
        assert!(
            access.contains("never extractable") && access.contains("local"),
            "{alias}: the private key was not generated on the token:\n{key}"
        );
        let der = self.path(&format!("{alias}.token.der"));
        self.pkcs11_tool(&[
            "--read-object",
            "--type",
            "cert",
            "--label",
            alias,
            "--output-file",
            &der,
        ]);
        let pem = self.path(&format!("{alias}.token.pem"));
        ok(
            run_in(
                None,
                "openssl",
                &["x509", "-inform", "DER", "-in", &der, "-out", &pem],
                &[],
            ),
            "openssl x509",
        );
    }

    /// The certificate keytool exports for `alias`, checked by openssl:
    /// the subject, the key, and the fingerprint `keytool -list` printed.
    fn check_exported_cert(&self, alias: &str, key_text: &str, fingerprint: &str) {
        let pem = self.path(&format!("{alias}.keytool.pem"));
        let mut args = vec!["-exportcert", "-rfc", "-alias", alias, "-file", &pem];
        args.extend(self.token());
        ok(self.jdk("keytool", &args, None), "keytool -exportcert");
        let text = ok(
            run_in(
                None,
                "openssl",
                &[
                    "x509",
                    "-in",
                    &pem,
                    "-noout",
                    "-subject",
                    "-text",
                    "-fingerprint",
                    "-sha256",
                ],
                &[],
            ),
            "openssl x509",
        );
        assert!(text.contains(&format!("CN = {alias}")), "{alias}: {text}");
        assert!(text.contains(key_text), "{alias}: not {key_text}: {text}");
        assert!(
            text.contains(&format!("sha256 Fingerprint={fingerprint}")),
            "{alias}: keytool -list printed {fingerprint}, openssl:\n{text}"
        );
        let der = self.path(&format!("{alias}.keytool.der"));
        ok(
            run_in(
                None,
                "openssl",
                &["x509", "-in", &pem, "-outform", "DER", "-out", &der],
                &[],
            ),
            "openssl x509",
        );
        assert!(
            std::fs::read(&der).unwrap() == std::fs::read(self.path(&format!("{alias}.token.der"))).unwrap(),
            "{alias}: keytool exports another certificate than the token holds"
        );
    }
}

/// The jar's files.
const CONTENT: [(&str, &[u8]); 2] = [
    ("hello.txt", b"hello from hahsm\n"),
    ("data/bytes.bin", &[0, 1, 2, 3, 0xfe, 0xff, 0x54]),
];

fn sha256_b64(data: &[u8]) -> String {
    use base64::Engine;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// The HA slot's id, from `pkcs11-tool -L`: "Slot 0 (0x…): …" then its token's label.
fn ha_slot_id(listing: &str) -> u64 {
    let line = listing
        .lines()
        .find(|l| l.starts_with("Slot "))
        .unwrap_or_else(|| panic!("no slot:\n{listing}"));
    let hex = line
        .split_once("(0x")
        .and_then(|(_, r)| r.split_once(')'))
        .unwrap_or_else(|| panic!("no slot id in {line}"))
        .0;
    assert_eq!(
        listing.lines().filter(|l| l.starts_with("Slot ")).count(),
        1,
        "the HA slot alone:\n{listing}"
    );
    assert!(
        listing.contains(&format!("token label        : {GROUP}")),
        "{listing}"
    );
    u64::from_str_radix(hex, 16).expect("hex slot id")
}

fn setup() -> Java {
    assert!(
        Path::new(&format!("{JDK}/bin/jarsigner")).exists(),
        "{JDK} is missing (scripts/test-deps.sh installs openjdk-17-jdk-headless)"
    );
    let c = Cluster::new(3);
    // HA only, with short deadlines so that a dead or stopped member costs little.
    let text = std::fs::read_to_string(c.ha_only_conf(Some(1500))).unwrap();
    let text = text
        .lines()
        .map(|l| match l.split('=').next().map(str::trim) {
            Some("handshake_timeout_ms") => "handshake_timeout_ms = 1000".to_string(),
            Some("connect_timeout_ms") => "connect_timeout_ms = 1000".to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let conf = c.work.path().join("client/java.toml");
    std::fs::write(&conf, format!("{text}\n")).unwrap();
    let dir = c.work.path().join("java");
    std::fs::create_dir_all(dir.join("signed")).unwrap();
    let module = module_path().to_str().expect("utf-8").to_string();
    Java {
        cfg: dir.join("hahsm-pkcs11.cfg").to_str().unwrap().to_string(),
        c,
        dir,
        conf,
        module,
        ran: Cell::new(0),
        failures: RefCell::new(Vec::new()),
    }
}

#[test]
fn java_keytool_and_jarsigner_use_keys_in_hahsm_across_a_killed_and_a_stopped_member() {
    let started = Instant::now();
    let mut j = setup();

    // The SunPKCS11 configuration: the module and the HA slot's id.
    let listing = {
        let envs = j.envs();
        let envs: Vec<(&str, &Path)> = envs.iter().map(|(k, v)| (*k, v.as_path())).collect();
        ok(
            run_in(None, "pkcs11-tool", &["--module", &j.module, "-L"], &envs),
            "pkcs11-tool -L",
        )
    };
    let slot = ha_slot_id(&listing);
    std::fs::write(
        &j.cfg,
        format!("name = hahsm\nlibrary = {}\nslot = {slot}\n", j.module),
    )
    .unwrap();

    // An empty token: keytool lists no entry.
    let entries = j.list().expect("keytool -list");
    assert!(entries.is_empty(), "{entries:?}");

    // The keys, generated on the token by keytool.
    j.genkeypair(RSA, &["-keyalg", "RSA", "-keysize", "2048"])
        .unwrap_or_else(|e| panic!("{e}\nmodule log:\n{}", j.log("pkcs11.log")));
    j.genkeypair(EC, &["-keyalg", "EC", "-groupname", "secp256r1"])
        .unwrap_or_else(|e| panic!("{e}\nmodule log:\n{}", j.log("pkcs11.log")));
    let entries = j.list().expect("keytool -list");
    let objects = j.pkcs11_tool(&["--list-objects"]);
    for (alias, key_text) in [(RSA, "Public-Key: (2048 bit)"), (EC, "NIST CURVE: P-256")] {
        let (_, kind, fingerprint) = entries
            .iter()
            .find(|(a, _, _)| a == alias)
            .unwrap_or_else(|| panic!("keytool -list lacks {alias}: {entries:?}"));
        assert_eq!(kind, "PrivateKeyEntry", "{alias}");
        j.token_cert(alias, &objects);
        j.check_exported_cert(alias, key_text, fingerprint);
    }
    assert_eq!(entries.len(), 2, "{entries:?}");

    // SunPKCS11 reads every certificate's CKA_TRUSTED (a certificate
    // attribute, PKCS#11 3.0 §4.6.3) and stops asking when it is invalid.
    let mut args = vec!["-J-Djava.security.debug=pkcs11keystore", "-list"];
    args.extend(j.token());
    let (listed, out, err) = j.jdk("keytool", &args, None);
    assert!(
        listed,
        "keytool -list with the keystore's debug output:\n{out}\n{err}"
    );
    // (The keystore's debug lines go to stderr, its alias map to stdout.)
    assert!(
        err.contains("P11KeyStore load. Entry count: 2")
            && out.matches("trusted=[false]").count() == 2
            && !err.contains("CKA_TRUSTED attribute not supported"),
        "the certificates' CKA_TRUSTED:\n{out}\n{err}"
    );
    // The PIN is checked: a wrong one opens nothing.
    let mut args = vec!["-v", "-list"];
    args.extend(
        j.token()
            .into_iter()
            .map(|a| if a == PIN { "wrong-pin" } else { a }),
    );
    let (opened, out, err) = j.jdk("keytool", &args, None);
    assert!(
        !opened && out.contains("load failed") && out.contains("PKCS11Exception: CKR_PIN_INCORRECT"),
        "keytool -list with a wrong PIN:\n{out}\n{err}"
    );

    // The jar, made by the JDK's jar from two files.
    let content = j.dir.join("content");
    for (name, bytes) in CONTENT {
        let p = content.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let jar = j.path("app.jar");
    ok(
        j.jdk("jar", &["cf", &jar, "-C", content.to_str().unwrap(), "."], None),
        "jar cf",
    );

    let keys = [(RSA, "RSA"), (EC, "EC")];
    let setup_runs = j.ran.get();
    // Every member up.
    for n in 0..2 {
        j.round(&format!("up{n}"), &keys);
    }
    // Member 1 killed in the middle of a round (while a Java command runs),
    // then rounds with it dead, and a new key made meanwhile.
    j.round_with_fault("dying", &keys, 1, Signal::SIGKILL);
    j.c.members[1].kill9();
    for n in 0..2 {
        j.round(&format!("dead{n}"), &keys);
        if n == 0 {
            if let Err(e) = j.genkeypair(DOWN, &["-keyalg", "EC", "-groupname", "secp256r1"]) {
                j.fail(format!("dead: {e}"));
            }
        }
    }
    let with_down = [(RSA, "RSA"), (EC, "EC"), (DOWN, "EC")];
    // Member 1 back: the key made while it was dead is there too.
    j.c.members[1].spawn();
    let objects = j.pkcs11_tool(&["--list-objects"]);
    j.token_cert(DOWN, &objects);
    for n in 0..2 {
        j.round(&format!("back{n}"), &with_down);
    }
    // Member 2 stopped in the middle of a round (its connections hang rather
    // than fail), a round with it stopped, then resumed.
    j.round_with_fault("stopping", &with_down, 2, Signal::SIGSTOP);
    j.round("stopped", &with_down);
    j.c.members[2].signal(Signal::SIGCONT);
    j.round("resumed", &with_down);

    let ran = j.ran.get() - setup_runs;
    let failures = j.failures.borrow();
    eprintln!(
        "t54: {ran} Java commands across the faults, {} failed, in {:?} in all",
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {ran} Java commands failed: {:#?}\nHA log:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        j.log("ha.log")
    );
    // The faults hit: Java processes' modules found member 1 dead and
    // member 2 not answering.
    let ha = j.log("ha.log");
    for (i, fault) in [(1, "killed"), (2, "stopped")] {
        let dropped = format!("has dropped member: {}", j.c.serials[i]);
        let n = ha.matches(&dropped).count();
        eprintln!("t54: {n} Java processes dropped the {fault} member");
        assert!(n > 0, "no Java process dropped the {fault} member:\n{ha}");
    }
}

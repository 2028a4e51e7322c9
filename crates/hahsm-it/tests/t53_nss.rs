//! NSS (issue 15, item 3), the crypto of Firefox, Thunderbird and many
//! servers, through the HA slot of a three-member group, with Debian's NSS
//! tools:
//!
//! - `modutil -add` registers the built module in a new NSS database, and
//!   `modutil -list` shows the HA group's token;
//! - `certutil -R -h TOKEN` makes an EC P-256 and an RSA-2048 key pair on the
//!   token and signs a certificate request with each; openssl verifies both;
//! - `certutil -A -h TOKEN` stores a certificate (issued by a test CA for the
//!   EC request) on the token; `certutil -L -h TOKEN` lists it beside its key
//!   (`u,u,u`), and pkcs11-tool reads it back byte for byte;
//! - `pk12util -i -h TOKEN` imports a PKCS#12 (an RSA key and its
//!   certificate, made by openssl); the imported key then signs a request
//!   (`certutil -R -k KEY-ID`) that openssl verifies with the PKCS#12's
//!   public key;
//!
//! with member 1 killed (`kill -9`) in the middle of the RSA key pair's
//! `certutil -R` (once that process has logged in on it), the rest made
//! while it is down, then restarted while other NSS commands run (requests
//! signed by the EC key, verified by openssl); once it has caught up, the
//! token's certificates and keys are listed, and the stored certificate read
//! by pkcs11-tool, with each member killed in turn. No NSS command fails.
mod t20_pkcs11_support;
use hahsm_it::cluster::{Cluster, GROUP, PIN};
use hahsm_it::{run, Member, Run};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use t20_pkcs11_support::module_path;

/// The NSS commands run (certutil, modutil, pk12util), for the report.
static NSS_COMMANDS: AtomicUsize = AtomicUsize::new(0);

/// Runs an NSS or openssl tool, failing the test with its output if it fails.
#[track_caller]
fn tool(program: &str, args: &[&str]) -> Run {
    if ["certutil", "modutil", "pk12util"].contains(&program) {
        NSS_COMMANDS.fetch_add(1, Ordering::SeqCst);
    }
    let r = run(program, args);
    assert!(
        r.ok,
        "{program} {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        r.stdout,
        r.stderr
    );
    r
}

/// An NSS database in `dir` with the module registered.
struct Nss<'a> {
    db: String,
    pwfile: String,
    dir: &'a Path,
}

impl Nss<'_> {
    fn certutil(&self, args: &[&str]) -> Run {
        let mut all = vec!["-d", &self.db, "-h", GROUP, "-f", &self.pwfile];
        all.extend_from_slice(args);
        tool("certutil", &all)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A certificate request signed by a new key pair on the token.
    fn request_with_new_key(&self, key: &[&str], subject: &str, out: &str) {
        let noise = self.path("noise");
        std::fs::write(&noise, [7u8; 64]).unwrap();
        let mut args = vec!["-R"];
        args.extend_from_slice(key);
        let out = self.path(out);
        args.extend_from_slice(&["-s", subject, "-a", "-o", &out, "-z", &noise]);
        self.certutil(&args);
        let verified = tool("openssl", &["req", "-verify", "-noout", "-in", &out]);
        assert!(
            format!("{}{}", verified.stdout, verified.stderr).contains("verify OK"),
            "openssl does not verify the request of {key:?}"
        );
    }

    /// The token's certificates as `certutil -L` lists them: (nickname, trust).
    fn certificates(&self) -> Vec<(String, String)> {
        self.certutil(&["-L"])
            .stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{GROUP}:")))
            .filter_map(|l| {
                let (name, trust) = l.trim_end().rsplit_once(char::is_whitespace)?;
                Some((name.trim().to_string(), trust.to_string()))
            })
            .collect()
    }

    /// The token's private keys as `certutil -K` lists them: (type, id, name).
    fn keys(&self) -> Vec<(String, String, String)> {
        self.certutil(&["-K"])
            .stdout
            .lines()
            .filter(|l| l.starts_with('<'))
            .filter_map(|l| {
                let mut f = l.split_once('>')?.1.split_whitespace();
                Some((
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                    f.collect::<Vec<_>>().join(" "),
                ))
            })
            .collect()
    }
}

/// Runs `work` (an NSS command) and kills `member` (SIGKILL) as soon as the
/// command's module has logged in there (the member logs it), so that the
/// member dies in the middle of the command, while it is in use.
fn killed_during<T>(member: &Member, work: impl FnOnce() -> T) -> T {
    let (out, fired) = member.signal_at_next_login(nix::sys::signal::Signal::SIGKILL, work);
    assert!(fired, "the NSS command never logged in on the member to kill");
    eprintln!("t53: member killed in the middle of the command, once it had logged in there");
    out
}

/// The certificate labelled `label` on the token, as pkcs11-tool reads it
/// (DER), through the same HA slot.
fn pkcs11_tool_cert(module: &Path, label: &str, out: &str) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    tool(
        "pkcs11-tool",
        &[
            "--module",
            module.to_str().unwrap(),
            "--read-object",
            "--type",
            "cert",
            "--label",
            label,
            "--output-file",
            out,
        ],
    );
    std::fs::read(out).unwrap()
}

fn public_key_of(file: &str, kind: &str) -> String {
    tool("openssl", &[kind, "-in", file, "-noout", "-pubkey"]).stdout
}

#[test]
fn nss_tools_make_keys_store_certificates_and_import_pkcs12_on_the_ha_token() {
    let started = Instant::now();
    let mut c = Cluster::new(3);
    c.ha_only_conf(None);
    let dir = c.work.path().join("nss");
    std::fs::create_dir_all(&dir).unwrap();
    let module = module_path();
    let nss = Nss {
        db: format!("sql:{}", dir.display()),
        pwfile: dir.join("token-pin").display().to_string(),
        dir: &dir,
    };
    std::fs::write(&nss.pwfile, format!("{PIN}\n")).unwrap();
    tool("certutil", &["-N", "-d", &nss.db, "--empty-password"]);
    tool(
        "modutil",
        &[
            "-dbdir",
            &nss.db,
            "-add",
            "hahsm",
            "-libfile",
            module.to_str().unwrap(),
            "-force",
        ],
    );
    let list = tool("modutil", &["-dbdir", &nss.db, "-list"]).stdout;
    assert!(
        list.contains(&format!("library name: {}", module.display()))
            && list.contains(&format!("token: {GROUP}")),
        "modutil -list does not show the HA token:\n{list}"
    );

    // A key pair on the token, with every member up.
    nss.request_with_new_key(
        &["-k", "ec", "-q", "nistp256"],
        "CN=nss ec key,O=hahsm tests",
        "ec.csr",
    );

    // Member 1 killed in the middle of the next key pair's certutil -R;
    // the rest made with it dead.
    killed_during(&c.members[1], || {
        nss.request_with_new_key(
            &["-k", "rsa", "-g", "2048"],
            "CN=nss rsa key,O=hahsm tests",
            "rsa.csr",
        )
    });
    c.members[1].kill9();

    // A test CA issues a certificate for the EC request; it goes on the token.
    let (ca_key, ca) = (nss.path("ca.key"), nss.path("ca.pem"));
    tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &ca_key,
            "-subj",
            "/CN=t53 test CA",
            "-days",
            "30",
            "-out",
            &ca,
        ],
    );
    let issued = nss.path("ec.pem");
    tool(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &nss.path("ec.csr"),
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            &issued,
        ],
    );
    nss.certutil(&["-A", "-n", "nss-ec", "-t", ",,", "-i", &issued]);
    let certs = nss.certificates();
    assert!(
        certs.contains(&(format!("{GROUP}:nss-ec"), "u,u,u".to_string())),
        "certutil -L does not list the stored certificate with its key: {certs:?}"
    );
    // pkcs11-tool reads the same certificate from the token.
    let der = nss.path("ec.der");
    tool(
        "openssl",
        &["x509", "-in", &issued, "-outform", "DER", "-out", &der],
    );
    let read = nss.path("read.der");
    let der = std::fs::read(&der).unwrap();
    assert_eq!(
        pkcs11_tool_cert(&module, "nss-ec", &read),
        der,
        "the certificate pkcs11-tool reads is not the one certutil stored"
    );

    // A PKCS#12 from openssl, imported onto the token.
    let (p12_key, p12_cert, p12) = (nss.path("p12.key"), nss.path("p12.pem"), nss.path("in.p12"));
    tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p12_key,
            "-subj",
            "/CN=t53 pkcs12",
            "-days",
            "30",
            "-out",
            &p12_cert,
        ],
    );
    tool(
        "openssl",
        &[
            "pkcs12",
            "-export",
            "-inkey",
            &p12_key,
            "-in",
            &p12_cert,
            "-name",
            "imported",
            "-passout",
            "pass:p12-pass",
            "-out",
            &p12,
        ],
    );
    let p12_pass = nss.path("p12-pass");
    std::fs::write(&p12_pass, "p12-pass\n").unwrap();
    let import = tool(
        "pk12util",
        &[
            "-i",
            &p12,
            "-d",
            &nss.db,
            "-h",
            GROUP,
            "-k",
            &nss.pwfile,
            "-w",
            &p12_pass,
        ],
    );
    assert!(
        import.stdout.contains("PKCS12 IMPORT SUCCESSFUL"),
        "{}",
        import.stdout
    );
    let certs = nss.certificates();
    assert!(
        certs.contains(&(format!("{GROUP}:imported"), "u,u,u".to_string())),
        "the imported certificate and key are not listed together: {certs:?}"
    );
    let keys = nss.keys();
    let imported = keys
        .iter()
        .find(|(kind, _, name)| kind == "rsa" && name == "imported")
        .unwrap_or_else(|| panic!("certutil -K does not list the imported key: {keys:?}"));
    // The imported key signs a request; its public key is the PKCS#12's.
    let signed = nss.path("imported.csr");
    nss.certutil(&[
        "-R",
        "-k",
        &imported.1,
        "-s",
        "CN=signed by the imported key",
        "-a",
        "-o",
        &signed,
    ]);
    let verified = tool("openssl", &["req", "-verify", "-noout", "-in", &signed]);
    assert!(format!("{}{}", verified.stdout, verified.stderr).contains("verify OK"));
    assert_eq!(
        public_key_of(&signed, "req"),
        public_key_of(&p12_cert, "x509"),
        "the request is not signed by the imported key"
    );
    assert!(
        keys.iter().filter(|(kind, _, _)| kind == "ec").count() == 1
            && keys.iter().filter(|(kind, _, _)| kind == "rsa").count() == 2,
        "certutil -K: one EC and two RSA private keys on the token, not {keys:?}"
    );

    // Member 1 restarted while the EC key signs requests (openssl verifies
    // each), until it has caught up.
    let ec_id = keys
        .iter()
        .find(|(kind, _, _)| kind == "ec")
        .map(|(_, id, _)| id.clone())
        .unwrap();
    let done = AtomicBool::new(false);
    let restart = Instant::now();
    let (signed_during, caught_up) = std::thread::scope(|s| {
        let signer = s.spawn(|| {
            let mut n = 0;
            // Some before the member is back, some while it catches up, and
            // at least one after.
            while !done.load(Ordering::SeqCst) || n < 5 {
                let out = nss.path("during.csr");
                nss.certutil(&[
                    "-R",
                    "-k",
                    &ec_id,
                    "-s",
                    "CN=during the restart",
                    "-a",
                    "-o",
                    &out,
                ]);
                let verified = tool("openssl", &["req", "-verify", "-noout", "-in", &out]);
                assert!(format!("{}{}", verified.stdout, verified.stderr).contains("verify OK"));
                n += 1;
            }
            n
        });
        c.members[1].spawn();
        let caught_up = c.wait_in_sync(1, Duration::from_secs(60));
        done.store(true, Ordering::SeqCst);
        (signer.join().expect("the signer ends"), caught_up)
    });
    assert!(caught_up, "member 1 did not catch up");
    eprintln!(
        "t53: {signed_during} requests signed by the EC key while member 1 restarted and caught up ({:?})",
        restart.elapsed()
    );

    // Every member in turn down: the token lists the same certificates and
    // keys from the other two, and pkcs11-tool reads the same certificate.
    let (certs, keys) = (nss.certificates(), nss.keys());
    for i in 0..3 {
        c.members[i].kill9();
        assert_eq!(nss.certificates(), certs, "certutil -L with member {i} down");
        assert_eq!(nss.keys(), keys, "certutil -K with member {i} down");
        assert_eq!(
            pkcs11_tool_cert(&module, "nss-ec", &read),
            der,
            "pkcs11-tool reads another certificate with member {i} down"
        );
        c.members[i].spawn();
        assert!(
            c.wait_in_sync(i, Duration::from_secs(60)),
            "member {i} did not catch up"
        );
    }
    eprintln!(
        "t53: {} NSS commands, none failed, in {:?}",
        NSS_COMMANDS.load(Ordering::SeqCst),
        started.elapsed()
    );
}

//! Real programs from Debian load the module: OpenSC's pkcs11-tool, OpenSSL 3
//! through the libp11 engine, and GnuTLS's p11tool. Each runs under a time
//! limit, so a hanging tool fails the test rather than hanging it.
mod t20_pkcs11_support;

use hahsm_it::{run, Standalone};
use std::path::Path;
use std::time::Duration;
use t20_pkcs11_support::{module_path, run_checks, tool};

struct Tools {
    st: Standalone,
    module: String,
}

const LIMIT: Duration = Duration::from_secs(120);

impl Tools {
    fn env(&self) -> Vec<(&'static str, &Path)> {
        vec![
            ("HAHSM_CONF", self.st.conf.as_path()),
            (
                "HAHSM_PKCS11_LOG",
                Box::leak(self.st.path("pkcs11.log").into_boxed_path()),
            ),
            ("HAHSM_PKCS11_DEBUG", Path::new("1")),
        ]
    }

    #[track_caller]
    fn p11tool_ok(&self, program: &str, args: &[&str]) -> String {
        let (ok, out, err) = tool(program, args, &self.env(), LIMIT);
        if !ok {
            let log = std::fs::read_to_string(self.st.path("pkcs11.log"))
                .unwrap_or_else(|e| format!("(no log at {}: {e})", self.st.path("pkcs11.log").display()));
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            panic!("{program} {args:?} failed\nstdout:\n{out}\nstderr:\n{err}\nmodule log (last lines, newest first):\n{}", tail.join("\n"));
        }
        out
    }

    fn pkcs11_tool(&self, args: &[&str]) -> String {
        let mut full = vec!["--module", &self.module, "--pin", &self.st.pin];
        full.extend_from_slice(args);
        self.p11tool_ok("pkcs11-tool", &full)
    }

    fn path(&self, name: &str) -> String {
        self.st.path(name).to_str().expect("utf-8").to_string()
    }
}

fn pkcs11_tool_self_test_passes(t: &Tools) {
    let out = t.pkcs11_tool(&["--test", "--login"]);
    assert!(!out.contains("failed") && !out.contains("FAILED"), "{out}");
    assert!(out.contains("No errors"), "{out}");
}

fn pkcs11_tool_lists_slots_and_every_mechanism(t: &Tools) {
    let out = t.p11tool_ok("pkcs11-tool", &["--module", &t.module, "-L"]);
    assert!(out.contains("myPart"), "{out}");
    let out = t.p11tool_ok("pkcs11-tool", &["--module", &t.module, "-M"]);
    assert!(
        out.contains("ECDSA-SHA256") && out.contains("RSA-PKCS-OAEP"),
        "{out}"
    );
}

/// OpenSC's pkcs11-spy (package opensc-pkcs11) wraps the module (issue 19:
/// it crashed in its own `C_GetInterface`, writing its function list into the
/// `CK_INTERFACE` the module handed it, which was in read-only memory).
fn pkcs11_spy_wraps_the_module(t: &Tools) {
    let spy = "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so";
    assert!(
        Path::new(spy).exists(),
        "{spy} is missing: scripts/test-deps.sh installs it with opensc"
    );
    let spy_log = t.st.path("spy.log");
    let module = Path::new(&t.module);
    let mut env = t.env();
    env.push(("PKCS11SPY", module));
    env.push(("PKCS11SPY_OUTPUT", spy_log.as_path()));
    let (ok, out, err) = tool("pkcs11-tool", &["--module", spy, "-L"], &env, LIMIT);
    let log = std::fs::read_to_string(&spy_log).unwrap_or_default();
    assert!(
        ok,
        "pkcs11-tool through pkcs11-spy failed\nstdout:\n{out}\nstderr:\n{err}\nspy log:\n{log}"
    );
    assert!(
        out.contains(&t.st.partition),
        "the slot is listed through the spy: {out}"
    );
    assert!(
        log.contains("C_GetInterface"),
        "the spy used C_GetInterface: {log}"
    );
}

fn pkcs11_tool_keygen_sign_verify(t: &Tools) {
    let data = t.path("tool-data.txt");
    std::fs::write(&data, b"signed by pkcs11-tool").unwrap();
    for (key_type, label, mech, id) in [
        ("rsa:2048", "tool-rsa", "SHA256-RSA-PKCS", "01"),
        ("EC:prime256v1", "tool-ec", "ECDSA-SHA256", "02"),
    ] {
        t.pkcs11_tool(&[
            "--login",
            "--keypairgen",
            "--key-type",
            key_type,
            "--label",
            label,
            "--id",
            id,
        ]);
        let sig = t.path(&format!("{label}.sig"));
        t.pkcs11_tool(&[
            "--login",
            "--sign",
            "--mechanism",
            mech,
            "--id",
            id,
            "--input-file",
            &data,
            "--output-file",
            &sig,
        ]);
        t.pkcs11_tool(&[
            "--login",
            "--verify",
            "--mechanism",
            mech,
            "--id",
            id,
            "--input-file",
            &data,
            "--signature-file",
            &sig,
        ]);
        // Reading the public key, then verifying with plain openssl.
        let der = t.path(&format!("{label}.pub.der"));
        t.pkcs11_tool(&[
            "--read-object",
            "--type",
            "pubkey",
            "--label",
            label,
            "--output-file",
            &der,
        ]);
        let mut args = vec![
            "dgst",
            "-sha256",
            "-verify",
            &der,
            "-keyform",
            "DER",
            "-signature",
            &sig,
            &data,
        ];
        let der_sig;
        if mech.starts_with("ECDSA") {
            // pkcs11-tool writes r||s; openssl wants DER.
            der_sig = t.path(&format!("{label}.sig.der"));
            std::fs::write(
                &der_sig,
                t20_pkcs11_support::ecdsa_der(&std::fs::read(&sig).unwrap()),
            )
            .unwrap();
            args[7] = &der_sig;
        }
        let v = run("openssl", &args);
        assert!(v.ok, "openssl verify {label}: {} {}", v.stdout, v.stderr);
    }
}

/// An openssl.cnf that loads the libp11 engine with our module.
fn engine_conf(t: &Tools) -> String {
    let conf = t.path("openssl-p11.cnf");
    std::fs::write(
        &conf,
        format!(
            "openssl_conf = conf\n[conf]\nengines = engines\n[engines]\npkcs11 = pkcs11\n\
             [pkcs11]\nengine_id = pkcs11\nMODULE_PATH = {}\nPIN = {}\ninit = 0\n",
            t.module, t.st.pin
        ),
    )
    .unwrap();
    conf
}

fn openssl_engine_signs_and_makes_a_certificate(t: &Tools) {
    t.pkcs11_tool(&[
        "--login",
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "ossl-ec",
        "--id",
        "42",
    ]);
    let conf = engine_conf(t);
    let confp = std::path::PathBuf::from(&conf);
    let mut env = t.env();
    env.push(("OPENSSL_CONF", confp.as_path()));
    let data = t.path("ossl-data.bin");
    std::fs::write(&data, [7u8; 32]).unwrap();
    let sig = t.path("ossl.sig");
    let uri = "pkcs11:token=myPart;object=ossl-ec;type=private";
    let (ok, out, err) = tool(
        "openssl",
        &[
            "pkeyutl", "-engine", "pkcs11", "-keyform", "engine", "-sign", "-inkey", uri, "-in", &data,
            "-out", &sig,
        ],
        &env,
        LIMIT,
    );
    assert!(ok, "pkeyutl -sign: {out} {err}");
    let cert = t.path("ossl-cert.pem");
    let (ok, out, err) = tool(
        "openssl",
        &[
            "req",
            "-engine",
            "pkcs11",
            "-keyform",
            "engine",
            "-key",
            uri,
            "-new",
            "-x509",
            "-days",
            "1",
            "-subj",
            "/CN=hahsm test",
            "-sha256",
            "-out",
            &cert,
        ],
        &env,
        LIMIT,
    );
    assert!(ok, "req -x509: {out} {err}");
    // Plain openssl checks both: the self-signed certificate, and the signature with its key.
    let v = run("openssl", &["verify", "-CAfile", &cert, &cert]);
    assert!(v.ok, "certificate verify: {} {}", v.stdout, v.stderr);
    let pubkey = t.path("ossl-pub.pem");
    let v = run(
        "openssl",
        &["x509", "-in", &cert, "-pubkey", "-noout", "-out", &pubkey],
    );
    assert!(v.ok, "{}", v.stderr);
    let v = run(
        "openssl",
        &[
            "pkeyutl", "-verify", "-pubin", "-inkey", &pubkey, "-in", &data, "-sigfile", &sig,
        ],
    );
    assert!(
        v.ok && v.stdout.contains("Success"),
        "signature verify: {} {}",
        v.stdout,
        v.stderr
    );
}

fn p11tool_test_sign(t: &Tools) {
    t.pkcs11_tool(&[
        "--login",
        "--keypairgen",
        "--key-type",
        "rsa:2048",
        "--label",
        "gnutls-rsa",
        "--id",
        "07",
    ]);
    let provider = format!("--provider={}", t.module);
    let (ok, out, err) = tool(
        "p11tool",
        &[
            &provider,
            "--login",
            "--set-pin",
            &t.st.pin,
            "--test-sign",
            "pkcs11:token=myPart;object=gnutls-rsa",
        ],
        &t.env(),
        LIMIT,
    );
    // p11tool reports on stderr.
    let all = format!("{out}{err}");
    assert!(
        ok && all.contains("Verifying against public key") && !all.contains("Error"),
        "{all}"
    );
}

/// `hahsm bench` runs end to end (briefly: this is a smoke run, not the benchmark).
fn hahsm_bench_runs(t: &Tools) {
    let r = hahsm_it::hahsm_env(
        Some(&t.st.conf),
        &["bench", "--threads", "2", "--seconds", "1", "--module", &t.module],
        &[("HAHSM_PIN", &t.st.pin)],
    )
    .expect_ok();
    for line in ["RSA-2048", "P-256"] {
        let row = r
            .stdout
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("{}", r.stdout));
        let rate: f64 = row
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("a rate");
        assert!(rate > 0.0, "{}", r.stdout);
    }
}

#[test]
fn real_programs_load_the_module() {
    let st = Standalone::new();
    let t = Tools {
        module: module_path().to_str().expect("utf-8").to_string(),
        st,
    };
    run_checks(
        &t,
        &[
            (
                "pkcs11_tool_lists_slots_and_every_mechanism",
                pkcs11_tool_lists_slots_and_every_mechanism,
            ),
            ("pkcs11_tool_self_test_passes", pkcs11_tool_self_test_passes),
            ("pkcs11_spy_wraps_the_module", pkcs11_spy_wraps_the_module),
            ("pkcs11_tool_keygen_sign_verify", pkcs11_tool_keygen_sign_verify),
            (
                "openssl_engine_signs_and_makes_a_certificate",
                openssl_engine_signs_and_makes_a_certificate,
            ),
            ("p11tool_test_sign", p11tool_test_sign),
            ("hahsm_bench_runs", hahsm_bench_runs),
        ],
    );
    let log = std::fs::read_to_string(t.st.path("pkcs11.log")).unwrap_or_default();
    eprintln!("module log:\n{log}");
    assert!(!log.contains(&t.st.pin), "the PIN never reaches the module's log");
}

/// The benchmark recorded in BENCHMARKS.md (not part of the test suite):
/// `cargo build --release -p hahsmd -p hahsm-cli -p hahsm-pkcs11`, then
/// `HAHSM_BIN_DIR=target/release cargo test -p hahsm-it --test t20_pkcs11_tools -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark, run by hand"]
fn benchmark_through_the_module() {
    let st = Standalone::new();
    let seconds = std::env::var("HAHSM_BENCH_SECONDS").unwrap_or_else(|_| "10".into());
    let module = module_path();
    let r = hahsm_it::hahsm_env(
        Some(&st.conf),
        &[
            "bench",
            "--threads",
            "8",
            "--seconds",
            &seconds,
            "--baseline",
            "raw,softhsm",
            "--module",
            module.to_str().expect("utf-8"),
        ],
        &[("HAHSM_PIN", &st.pin)],
    )
    .expect_ok();
    println!("{}", r.stdout);
}

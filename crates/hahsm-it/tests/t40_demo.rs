//! `hahsm demo`: a newcomer's first command sets up a working HA group, its
//! fault commands act on real processes, and Ctrl-C stops everything.
use hahsm_it::{bin, hahsm, hahsm_env};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

fn alive(pid: u64) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

fn wait(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

fn pids(demo: &serde_json::Value) -> Vec<u64> {
    demo["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["pid"].as_u64().unwrap())
        .collect()
}

#[test]
fn demo_detached_serves_keys_survives_faults_and_stops() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("demo");
    let d = dir.to_str().unwrap();
    let out = hahsm(None, &["demo", "--detach", "--members", "3", "--dir", d]).expect_ok();
    assert!(out.stdout.contains("export HAHSM_CONF="), "{}", out.stdout);
    let demo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("demo.json")).unwrap()).unwrap();
    for key in ["module", "conf", "token_label", "user_pin", "so_pin"] {
        assert!(demo[key].is_string(), "demo.json lacks {key}");
    }
    assert_eq!(demo["members"].as_array().unwrap().len(), 3);
    // Each member's metrics endpoint is discoverable, and answers.
    for m in demo["members"].as_array().unwrap() {
        let url = m["metrics"].as_str().unwrap_or_default();
        let addr = url
            .strip_prefix("http://")
            .and_then(|u| u.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("demo.json member without a metrics URL: {m}"));
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        use std::io::{Read, Write};
        write!(
            tcp,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("hahsm_group_in_sync{group=\""), "{answer}");
    }
    let conf = std::path::PathBuf::from(demo["conf"].as_str().unwrap());
    let pin = demo["user_pin"].as_str().unwrap();
    let keys = |args: &[&str]| {
        let mut full = vec!["keys"];
        full.extend_from_slice(args);
        hahsm_env(Some(&conf), &full, &[("HAHSM_PIN", pin)])
    };
    keys(&["gen", "--type", "ec:p256", "--label", "first", "--server", "hsm1"]).expect_ok();
    assert!(keys(&["list", "--server", "hsm3"])
        .expect_ok()
        .stdout
        .contains("first"));

    // Kill member 2: the others carry on; restart it: it catches up.
    hahsm(None, &["demo", "kill-member", "2", "--dir", d]).expect_ok();
    keys(&[
        "gen",
        "--type",
        "aes:128",
        "--label",
        "while-2-down",
        "--server",
        "hsm1",
    ])
    .expect_ok();
    hahsm(None, &["demo", "restart-member", "2", "--dir", d]).expect_ok();
    assert!(wait(Duration::from_secs(15), || keys(&[
        "list", "--server", "hsm2"
    ])
    .stdout
    .contains("while-2-down")));

    // Pause and resume member 3.
    hahsm(None, &["demo", "pause-member", "3", "--dir", d]).expect_ok();
    keys(&[
        "gen",
        "--type",
        "aes:128",
        "--label",
        "while-3-paused",
        "--server",
        "hsm1",
    ])
    .expect_ok();
    hahsm(None, &["demo", "resume-member", "3", "--dir", d]).expect_ok();
    assert!(wait(Duration::from_secs(15), || keys(&[
        "list", "--server", "hsm3"
    ])
    .stdout
    .contains("while-3-paused")));

    // What the demo prints for pkcs11-tool and OpenSSL works as printed:
    // one slot, the group's, and a key made there signs through the engine.
    let module = demo["module"].as_str().unwrap();
    let label = demo["token_label"].as_str().unwrap();
    let with_conf = |program: &str, args: &[&str]| {
        let out = std::process::Command::new("timeout")
            .arg("60")
            .arg(program)
            .args(args)
            .env("HAHSM_CONF", &conf)
            .env("OPENSSL_CONF", demo["openssl_conf"].as_str().unwrap())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{program} {args:?}: {text}");
        text
    };
    let slots = with_conf("pkcs11-tool", &["--module", module, "-L"]);
    assert_eq!(slots.matches("token label").count(), 1, "HA slot only: {slots}");
    assert!(slots.contains(label), "{slots}");
    with_conf(
        "pkcs11-tool",
        &[
            "--module",
            module,
            "--login",
            "--pin",
            pin,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "p11key",
        ],
    );
    let data = dir.join("data.bin");
    std::fs::write(&data, [1u8; 32]).unwrap();
    let uri = format!("pkcs11:token={label};object=p11key;type=private;pin-value={pin}");
    let sig = dir.join("sig");
    with_conf(
        "openssl",
        &[
            "pkeyutl",
            "-engine",
            "pkcs11",
            "-keyform",
            "engine",
            "-sign",
            "-inkey",
            &uri,
            "-in",
            data.to_str().unwrap(),
            "-out",
            sig.to_str().unwrap(),
        ],
    );
    assert!(std::fs::metadata(&sig).unwrap().len() > 0);

    let demo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("demo.json")).unwrap()).unwrap();
    hahsm(None, &["demo", "stop", "--dir", d]).expect_ok();
    for pid in pids(&demo) {
        assert!(
            wait(Duration::from_secs(10), || !alive(pid)),
            "member {pid} still runs after demo stop"
        );
    }
}

#[test]
fn demo_in_the_foreground_stops_everything_on_ctrl_c() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("demo");
    let mut child = std::process::Command::new(bin("hahsm"))
        .args(["demo", "--members", "2", "--dir", dir.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait(Duration::from_secs(60), || std::fs::read_to_string(
            dir.join("demo.json")
        )
        .is_ok()),
        "the demo never became ready"
    );
    let demo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("demo.json")).unwrap()).unwrap();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    for pid in pids(&demo) {
        assert!(
            wait(Duration::from_secs(10), || !alive(pid)),
            "member {pid} survived Ctrl-C"
        );
    }
}

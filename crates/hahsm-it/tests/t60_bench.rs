//! `hahsm bench` keeps working: short smoke runs (a second per point) against a
//! real 2-member group made by `hahsm demo`, through the HA slot, a physical
//! slot and worker processes, with the baselines, JSON, CSV and plots. These
//! check that the tool measures and reports; the figures themselves belong in
//! BENCHMARKS.md, not in assertions.
use hahsm_it::{hahsm, hahsm_env, Run};
use std::path::{Path, PathBuf};

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A demo group, stopped when the test ends (pass or fail).
struct Demo {
    dir: PathBuf,
    conf: PathBuf,
    pin: String,
    _work: tempfile::TempDir,
}

impl Demo {
    /// Starts the group, again if `hahsm demo` read a member's address file
    /// before the member finished writing it (a known race in the demo, not
    /// what these tests are about).
    fn start(members: &str) -> Demo {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("demo");
        let d = dir.to_str().unwrap();
        let mut attempt = 1;
        let demo = loop {
            hahsm(None, &["demo", "--detach", "--members", members, "--dir", d]).expect_ok();
            let demo: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("demo.json")).unwrap()).unwrap();
            let addresses_ok = demo["members"].as_array().unwrap().iter().all(|m| {
                m["address"]
                    .as_str()
                    .is_some_and(|a| a.parse::<std::net::SocketAddr>().is_ok())
            });
            if addresses_ok || attempt == 3 {
                break demo;
            }
            hahsm(None, &["demo", "stop", "--dir", d]);
            attempt += 1;
        };
        Demo {
            // Every slot: the test measures physical slots as well as the HA slot.
            conf: PathBuf::from(demo["conf_all_slots"].as_str().unwrap()),
            pin: demo["user_pin"].as_str().unwrap().to_string(),
            dir,
            _work: work,
        }
    }

    fn bench(&self, args: &[&str]) -> Run {
        let mut full = vec!["bench"];
        full.extend_from_slice(args);
        hahsm_env(Some(&self.conf), &full, &[("HAHSM_PIN", &self.pin)])
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        hahsm(None, &["demo", "stop", "--dir", self.dir.to_str().unwrap()]);
    }
}

const FIELDS: [&str; 8] = [
    "mode",
    "threads",
    "processes",
    "ops_per_s",
    "p50_us",
    "p99_us",
    "max_us",
    "errors",
];

/// Every stdout line is one point, with exactly the fields.
fn points(r: &Run) -> Vec<serde_json::Map<String, serde_json::Value>> {
    r.stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", r.stderr));
            v.as_object().expect("a JSON object").clone()
        })
        .collect()
}

fn assert_point(p: &serde_json::Map<String, serde_json::Value>, baselines: &[&str]) {
    let mut expected: Vec<String> = FIELDS.iter().map(|f| f.to_string()).collect();
    for b in baselines {
        expected.push(format!("{b}_ops_per_s"));
        expected.push(format!("{b}_ratio"));
    }
    let mut got: Vec<String> = p.keys().cloned().collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "{p:?}");
    assert!(p["ops_per_s"].as_f64().unwrap() > 0.0, "no operations: {p:?}");
    assert!(p["max_us"].as_u64().unwrap() >= p["p50_us"].as_u64().unwrap());
    for b in baselines {
        assert!(p[&format!("{b}_ops_per_s")].as_f64().unwrap() > 0.0, "{b}: {p:?}");
        assert!(p[&format!("{b}_ratio")].as_f64().unwrap() > 0.0, "{b}: {p:?}");
    }
}

fn assert_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.starts_with("<svg"), "{}", path.display());
    assert!(text.trim_end().ends_with("</svg>"), "{}", path.display());
    assert!(
        text.contains("<polyline") || text.contains("<path"),
        "no line drawn"
    );
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert!(bytes.len() > 5_000, "a blank PNG");
}

#[test]
fn bench_measures_through_the_ha_slot_physical_slots_and_processes() {
    let demo = Demo::start("2");
    let out = tempfile::tempdir().unwrap();
    let (csv, svg, png) = (
        out.path().join("b.csv"),
        out.path().join("b.svg"),
        out.path().join("b.png"),
    );
    let softhsm = Path::new(SOFTHSM).exists();
    let r = demo
        .bench(&[
            "--slot",
            "ha",
            "--mode",
            "rsa-sign,hmac",
            "--threads",
            "1-2",
            "--seconds",
            "1",
            "--warmup",
            "0.2",
            "--baseline",
            "raw,softhsm",
            "--json",
            "--csv",
            csv.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
            "--plot",
            png.to_str().unwrap(),
        ])
        .expect_ok();
    let ps = points(&r);
    assert_eq!(ps.len(), 4, "2 modes × 2 thread counts: {}", r.stdout);
    let baselines: &[&str] = if softhsm { &["raw", "softhsm"] } else { &["raw"] };
    for p in &ps {
        assert_point(p, baselines);
        assert_eq!(p["processes"], 1);
    }
    assert_eq!(ps[0]["mode"], "rsa-sign:2048");
    assert_eq!(ps[1]["threads"], 2);
    if !softhsm {
        assert!(r.stderr.contains("SoftHSM2 is not installed"), "{}", r.stderr);
    }
    let table = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(table.lines().count(), 5, "{table}");
    assert!(table.starts_with("config,mode,threads,processes,ops_per_s"));
    for m in ["rsa-sign-2048", "hmac"] {
        assert_svg(&out.path().join(format!("b-{m}.svg")));
        assert_png(&out.path().join(format!("b-{m}.png")));
    }

    // Two worker processes on one physical slot: their samples are merged.
    let r = demo
        .bench(&[
            "--slot",
            "hsm2",
            "--mode",
            "ecdsa-sign:p256",
            "--threads",
            "2",
            "--processes",
            "2",
            "--seconds",
            "1",
            "--warmup",
            "0.2",
            "--json",
        ])
        .expect_ok();
    let ps = points(&r);
    assert_eq!(ps.len(), 1, "{}", r.stdout);
    assert_point(&ps[0], &[]);
    assert_eq!(ps[0]["processes"], 2);

    // The other modes run too, in the text table (first column the operation).
    let r = demo
        .bench(&[
            "--mode",
            "rsa-keygen,eddsa-sign,aes-gcm,ecdh:p384,ecdsa-sign:p384",
            "--threads",
            "1",
            "--seconds",
            "1",
            "--warmup",
            "0",
        ])
        .expect_ok();
    for op in ["RSA-2048-gen", "Ed25519", "AES-256-GCM", "ECDH-P-384", "P-384"] {
        let row = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{op} ")))
            .unwrap_or_else(|| panic!("no {op} row:\n{}", r.stdout));
        let rate: f64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(rate > 0.0, "{row}");
    }
}

#[test]
fn bench_refuses_bad_input_clearly() {
    let conf = Path::new("/nonexistent/client.toml");
    for (args, needle) in [
        (vec!["bench", "--threads", "0"], "thread counts go from 1"),
        (vec!["bench", "--threads", "8-2"], "goes backwards"),
        (vec!["bench", "--mode", "rsa-sign:1024"], "use 2048, 3072 or 4096"),
        (vec!["bench", "--mode", "dsa"], "unknown mode"),
        (
            vec!["bench", "--plot", "out.jpg", "--pin", "x"],
            "must end in .svg or .png",
        ),
        (
            vec!["bench", "--processes", "0", "--pin", "x"],
            "--processes takes 1 to 64",
        ),
        (vec!["bench", "--seconds", "1"], "the user PIN is needed"),
    ] {
        hahsm(Some(conf), &args).expect_err(needle);
    }
}

#[test]
fn bench_scenario_starts_its_group_and_writes_table_and_plots() {
    let out = tempfile::tempdir().unwrap();
    let r = hahsm(
        None,
        &[
            "bench",
            "scenario",
            "threads",
            "--members",
            "2",
            "--threads",
            "1,2",
            "--seconds",
            "1",
            "--warmup",
            "0.2",
            "--mode",
            "rsa-sign",
            "--baseline",
            "raw",
            "--out",
            out.path().to_str().unwrap(),
        ],
    )
    .expect_ok();
    assert!(r.stdout.contains("hahsm HA slot (2 members)"), "{}", r.stdout);
    let csv = std::fs::read_to_string(out.path().join("threads.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let jsonl = std::fs::read_to_string(out.path().join("threads.jsonl")).unwrap();
    for line in jsonl.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["config"], "hahsm HA slot (2 members)");
        assert!(v["ops_per_s"].as_f64().unwrap() > 0.0, "{line}");
        assert!(v["raw_ratio"].as_f64().unwrap() > 0.0, "{line}");
    }
    assert_svg(&out.path().join("threads-rsa-sign-2048.svg"));
    assert_png(&out.path().join("threads-rsa-sign-2048.png"));
}

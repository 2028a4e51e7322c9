//! Secret-leak scan: keys whose values the test knows (RSA, EC, AES, an
//! ML-DSA seed, an ML-KEM decapsulation key and a shared secret it opens) are
//! imported through the PKCS#11 module's HA slot, used, replicated to a
//! 3-member group, and used again after every member restarts. Then every file
//! the members and the client wrote (stores, WALs, logs, the HA log, the
//! module's log) and a loopback capture of the client and replication links
//! are searched for the keys' bytes and their common encodings, for the PIN
//! and for the three secrets. Nothing may match.
mod t20_pkcs11_support;

use base64::Engine;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, KeyType, MlDsaParameterSetType, MlKemParameterSetType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, PARTITION, PIN};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use t20_pkcs11_support::module_path;

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A secret the scan looks for, under a name for the report.
struct Needle {
    name: String,
    forms: Vec<(String, Vec<u8>)>,
}

/// The byte strings by which `value` could appear: raw big-endian, reversed
/// (little-endian), hex in either case, and base64 (standard and URL-safe) at
/// each of the three alignments it can have inside a longer encoding.
fn encodings(name: &str, value: &[u8]) -> Needle {
    let mut forms = vec![
        ("raw".to_string(), value.to_vec()),
        ("reversed".to_string(), value.iter().rev().copied().collect()),
        ("hex".to_string(), hex::encode(value).into_bytes()),
        ("HEX".to_string(), hex::encode_upper(value).into_bytes()),
    ];
    for (alphabet, engine) in [
        ("base64", &base64::engine::general_purpose::STANDARD_NO_PAD),
        ("base64url", &base64::engine::general_purpose::URL_SAFE_NO_PAD),
    ] {
        for shift in 0..3 {
            let padded = [vec![0u8; shift], value.to_vec()].concat();
            let text = engine.encode(&padded);
            // Only the characters that depend on `value` alone.
            let start = (4 * shift).div_ceil(3);
            let end = padded.len() / 3 * 4;
            forms.push((
                format!("{alphabet}+{shift}"),
                text.as_bytes()[start..end].to_vec(),
            ));
        }
    }
    Needle {
        name: name.to_string(),
        forms,
    }
}

/// `name` and the form of the first needle found in `haystack`, if any;
/// searched as it is and with line breaks and spaces removed (PEM, wrapped hex).
fn find(needles: &[Needle], haystack: &[u8]) -> Option<String> {
    let joined: Vec<u8> = haystack
        .iter()
        .copied()
        .filter(|b| !matches!(b, b'\n' | b'\r' | b' '))
        .collect();
    find_exact(needles, haystack).or_else(|| find_exact(needles, &joined))
}

fn find_exact(needles: &[Needle], haystack: &[u8]) -> Option<String> {
    for n in needles {
        for (form, bytes) in &n.forms {
            if memchr::memmem::find(haystack, bytes).is_some() {
                return Some(format!("{} ({form})", n.name));
            }
        }
    }
    None
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("text")
}

/// The fields of `openssl pkey -text`: each name with its big-endian bytes,
/// without leading zeros.
fn key_fields(text: &str) -> BTreeMap<String, Vec<u8>> {
    let mut fields = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_suffix(':').filter(|_| !line.starts_with(' ')) {
            if let Some((n, h)) = current.take() {
                fields.insert(n, h);
            }
            current = Some((name.to_string(), String::new()));
        } else if line.starts_with(' ') {
            if let Some((_, h)) = current.as_mut() {
                h.push_str(&line.trim().replace(':', ""));
            }
        } else if let Some((n, h)) = current.take() {
            fields.insert(n, h);
        }
    }
    if let Some((n, h)) = current.take() {
        fields.insert(n, h);
    }
    fields
        .into_iter()
        .filter_map(|(n, h)| {
            let bytes: Vec<u8> = hex::decode(h).ok()?.into_iter().skip_while(|b| *b == 0).collect();
            Some((n, bytes))
        })
        .collect()
}

/// A loopback capture of some TCP ports, by `dumpcap` (Wireshark's capture tool).
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(file: &Path, ports: &[u16]) -> Capture {
        let filter = ports
            .iter()
            .map(|p| format!("tcp port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let child = Command::new("dumpcap")
            .args(["-i", "lo", "-q", "-f", &filter, "-w"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dumpcap runs (install tshark; capturing needs root or dumpcap's capabilities)");
        let mut c = Capture {
            child,
            file: file.to_path_buf(),
        };
        // dumpcap writes the file's header once it captures.
        let started = Instant::now();
        while std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) == 0 {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("dumpcap exited at once ({status}): capturing needs root or dumpcap's capabilities");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "dumpcap did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        c
    }

    /// Stops the capture and returns the TCP payloads, reassembled per
    /// connection and direction.
    fn finish(mut self) -> Vec<Vec<u8>> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        let out = Command::new("tshark")
            .args(["-r"])
            .arg(&self.file)
            .args([
                "-T",
                "fields",
                "-e",
                "tcp.stream",
                "-e",
                "tcp.srcport",
                "-e",
                "tcp.payload",
            ])
            .output()
            .expect("tshark runs");
        assert!(
            out.status.success(),
            "tshark: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut streams: BTreeMap<(String, String), Vec<u8>> = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut f = line.split('\t');
            let (Some(stream), Some(port), Some(payload)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let bytes = hex::decode(payload.replace(':', "")).unwrap_or_default();
            streams
                .entry((stream.to_string(), port.to_string()))
                .or_default()
                .extend(bytes);
        }
        streams.into_values().collect()
    }
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            all_files(&path, out);
        } else if path.is_file() {
            out.push(path);
        }
    }
}

/// Searches every file under `dir` but the secret files themselves; returns
/// the files scanned.
fn scan_files(dir: &Path, needles: &[Needle], secret_files: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    all_files(dir, &mut files);
    files.retain(|f| !secret_files.contains(f));
    let mut scanned = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        scanned += bytes.len();
        if let Some(hit) = find(needles, &bytes) {
            panic!("{hit} found in {}", f.display());
        }
    }
    eprintln!("{} files, {scanned} bytes scanned: no secret found", files.len());
    files
}

/// The body of a plain HTTP GET (the members' metrics endpoints).
fn ha_slot_session(p11: &Pkcs11) -> Session {
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slots = p11.get_slots_with_token().expect("slots");
    assert_eq!(slots.len(), 1, "the HA slot");
    let s = p11.open_rw_session(slots[0]).expect("session");
    s.login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
        .expect("login");
    s
}

fn by_label(s: &Session, label: &str) -> ObjectHandle {
    let found = s
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .expect("find");
    assert_eq!(found.len(), 1, "{label}");
    found[0]
}

/// Signs with the RSA and EC keys and round-trips data through the AES key.
fn use_keys(s: &Session) {
    let rsa = by_label(s, "leak-rsa");
    let ec = by_label(s, "leak-ec");
    let aes = by_label(s, "leak-aes");
    assert_eq!(
        s.sign(&Mechanism::Sha256RsaPkcs, rsa, b"data").unwrap().len(),
        256
    );
    assert_eq!(s.sign(&Mechanism::EcdsaSha256, ec, b"data").unwrap().len(), 64);
    let iv = [3u8; 16];
    let ct = s.encrypt(&Mechanism::AesCbcPad(iv), aes, b"plain text").unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::AesCbcPad(iv), aes, &ct).unwrap(),
        b"plain text"
    );
    let ml_dsa = by_label(s, "leak-ml-dsa");
    let mech = Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Preferred, None));
    assert_eq!(s.sign(&mech, ml_dsa, b"data").unwrap().len(), 3309);
}

#[test]
fn no_secret_reaches_a_file_or_the_wire() {
    // Keys with known values, made outside the members.
    let own = tempfile::tempdir().unwrap();
    let rsa_pem = own.path().join("rsa.pem");
    let ec_pem = own.path().join("ec.pem");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p(&rsa_pem),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &p(&ec_pem),
    ]);
    let rsa = key_fields(&openssl(&["pkey", "-in", &p(&rsa_pem), "-text", "-noout"]));
    let ec = key_fields(&openssl(&["pkey", "-in", &p(&ec_pem), "-text", "-noout"]));
    let scalar = ec["priv"].clone();
    let scalar = [vec![0u8; 32 - scalar.len()], scalar].concat();
    let mut aes_value = [0u8; 32];
    aws_lc_rs::rand::fill(&mut aes_value).unwrap();
    // Post-quantum keys: an ML-DSA seed, an ML-KEM dk, and the secret a
    // ciphertext made here to that dk's public half carries.
    let mut ml_dsa_seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut ml_dsa_seed).unwrap();
    let dk = aws_lc_rs::kem::DecapsulationKey::generate(&aws_lc_rs::kem::ML_KEM_768).unwrap();
    let ml_kem_dk = dk.key_bytes().unwrap().as_ref().to_vec();
    let (kem_ciphertext, kem_secret) = dk.encapsulation_key().unwrap().encapsulate().unwrap();
    let (kem_ciphertext, kem_secret) = (kem_ciphertext.as_ref().to_vec(), kem_secret.as_ref().to_vec());

    let mut c = Cluster::new(3);
    // One member logs JSON lines to a file of its own: the scan covers both
    // log formats and both log destinations.
    let json_log = c.members[1].data_dir().join("hahsmd.jsonl");
    c.members[1].add_top_level(&format!(
        "log_format = \"json\"\nlog_file = \"{}\"",
        json_log.display()
    ));
    c.members[1].stop();
    c.members[1].spawn();
    let mut ports: Vec<u16> = Vec::new();
    for m in &c.members {
        for a in [&m.address, &m.peer_address] {
            ports.push(a.rsplit(':').next().unwrap().parse().unwrap());
        }
    }
    for proxy in c.proxies.values() {
        ports.push(proxy.addr.rsplit(':').next().unwrap().parse().unwrap());
    }
    let capture = (nix::unistd::geteuid().is_root())
        .then(|| Capture::start(&own.path().join("loopback.pcapng"), &ports));
    if capture.is_none() {
        eprintln!("not root: the loopback capture is skipped (CI runs as root)");
    }

    // What to look for.
    let mut needles = vec![
        encodings("AES key", &aes_value),
        encodings("EC private scalar", &scalar),
    ];
    for field in [
        "privateExponent",
        "prime1",
        "prime2",
        "exponent1",
        "exponent2",
        "coefficient",
    ] {
        needles.push(encodings(&format!("RSA {field}"), &rsa[field]));
    }
    let pkcs8 = |pem: &Path| {
        let out = Command::new("openssl")
            .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
            .arg(pem)
            .output()
            .unwrap();
        out.stdout
    };
    needles.push(encodings("RSA PKCS#8", &pkcs8(&rsa_pem)));
    needles.push(encodings("EC PKCS#8", &pkcs8(&ec_pem)));
    needles.push(encodings("PIN", PIN.as_bytes()));
    let secret_files = [
        c.domain_secret.clone(),
        c.owner_secret.clone(),
        c.members[0].dir.join("so.key"),
        c.members[1].dir.join("so.key"),
        c.members[2].dir.join("so.key"),
    ];
    for f in &secret_files {
        let bytes = hex::decode(std::fs::read_to_string(f).unwrap().trim()).unwrap();
        needles.push(encodings(&format!("secret {}", f.display()), &bytes));
    }
    needles.push(encodings("ML-DSA seed", &ml_dsa_seed));
    needles.push(encodings("ML-KEM decapsulation key", &ml_kem_dk));
    needles.push(encodings("ML-KEM shared secret", &kem_secret));
    // The scan finds what it looks for: every needle is in its source.
    let rsa_der = pkcs8(&rsa_pem);
    for n in &needles[2..8] {
        assert!(
            find(std::slice::from_ref(n), &rsa_der).is_some(),
            "{} not in its own DER",
            n.name
        );
    }
    let pem_text = std::fs::read(&rsa_pem).unwrap();
    assert!(
        find(&needles[8..9], &pem_text).is_some(),
        "the PKCS#8 not found in its own PEM"
    );

    // The HA slot only, with the module's and the HA log in the group's directory.
    let text = std::fs::read_to_string(&c.conf).unwrap();
    let conf = c.work.path().join("client/ha.toml");
    std::fs::write(&conf, format!("ha_only = true\n{text}\n")).unwrap();
    std::env::set_var("HAHSM_CONF", &conf);
    std::env::set_var("HAHSM_PKCS11_LOG", c.work.path().join("client/pkcs11.log"));
    std::env::set_var("HAHSM_HA_LOG", c.work.path().join("client/ha.log"));
    std::env::set_var("HAHSM_PKCS11_DEBUG", "1");

    let p11 = Pkcs11::new(module_path()).expect("module loads");
    let s = ha_slot_session(&p11);
    let rsa_template = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(true),
        Attribute::Label(b"leak-rsa".to_vec()),
        Attribute::Sign(true),
        Attribute::Modulus(rsa["modulus"].clone()),
        Attribute::PublicExponent(vec![1, 0, 1]),
        Attribute::PrivateExponent(rsa["privateExponent"].clone()),
        Attribute::Prime1(rsa["prime1"].clone()),
        Attribute::Prime2(rsa["prime2"].clone()),
        Attribute::Exponent1(rsa["exponent1"].clone()),
        Attribute::Exponent2(rsa["exponent2"].clone()),
        Attribute::Coefficient(rsa["coefficient"].clone()),
    ];
    s.create_object(&rsa_template).expect("RSA key imported");
    s.create_object(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(true),
        Attribute::Label(b"leak-ec".to_vec()),
        Attribute::Sign(true),
        Attribute::EcParams(P256.to_vec()),
        Attribute::Value(scalar.clone()),
    ])
    .expect("EC key imported");
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Label(b"leak-aes".to_vec()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Value(aes_value.to_vec()),
    ])
    .expect("AES key imported");
    s.create_object(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::ML_DSA),
        Attribute::ParameterSet(MlDsaParameterSetType::ML_DSA_65.into()),
        Attribute::Token(true),
        Attribute::Label(b"leak-ml-dsa".to_vec()),
        Attribute::Sign(true),
        Attribute::Seed(ml_dsa_seed.to_vec()),
    ])
    .expect("ML-DSA key imported");
    let kem = s
        .create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::ML_KEM),
            Attribute::ParameterSet(MlKemParameterSetType::ML_KEM_768.into()),
            Attribute::Token(true),
            Attribute::Label(b"leak-ml-kem".to_vec()),
            Attribute::Decapsulate(true),
            Attribute::Value(ml_kem_dk.clone()),
        ])
        .expect("ML-KEM key imported");
    // The shared secret becomes a token key (sensitive, as by default) on the members.
    s.decapsulate_key(
        &Mechanism::MlKem,
        kem,
        &[
            Attribute::Token(true),
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Label(b"leak-ml-kem-secret".to_vec()),
            Attribute::Sign(true),
        ],
        &kem_ciphertext,
    )
    .expect("decapsulated");
    use_keys(&s);
    // Replicated to every member.
    for i in 0..3 {
        assert!(
            c.wait(Duration::from_secs(60), || {
                let list = c.keys(i, &["list"]).stdout;
                [
                    "leak-rsa",
                    "leak-ec",
                    "leak-aes",
                    "leak-ml-dsa",
                    "leak-ml-kem",
                    "leak-ml-kem-secret",
                ]
                .iter()
                .all(|l| list.contains(l))
            }),
            "member {i} did not get the keys"
        );
    }
    drop(s);
    p11.finalize().expect("C_Finalize");
    // The running members' files, WALs included.
    let files = scan_files(c.work.path(), &needles, &secret_files);
    assert!(
        files.iter().any(|f| f.ends_with("hahsm.db")),
        "the stores were scanned"
    );
    assert!(
        files.iter().any(|f| f.ends_with("hahsm.db-wal")),
        "the WALs were scanned"
    );
    assert!(files.contains(&json_log), "the JSON log was scanned");
    let json_lines = std::fs::read_to_string(&json_log).unwrap();
    assert!(json_lines.lines().count() > 3, "{json_lines}");
    for line in json_lines.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }

    // A backup of the partition, and each member's metrics page, kept where
    // an operator would keep them: scanned with everything else below.
    let backup = c.work.path().join("leak-backup.bak");
    let path = |p: &Path| p.to_str().expect("utf-8").to_string();
    hahsm_it::hahsm(
        None,
        &[
            "backup",
            "--socket",
            &path(&c.members[0].admin_socket()),
            "--partition",
            PARTITION,
            "--owner-secret",
            &path(&c.owner_secret),
            "--domain-secret",
            &path(&c.domain_secret),
            "--out",
            &path(&backup),
        ],
    )
    .expect_ok();
    for (i, m) in c.members.iter().enumerate() {
        std::fs::write(
            c.work.path().join(format!("metrics-{i}.txt")),
            hahsm_it::http_get(&m.metrics_url()),
        )
        .unwrap();
    }

    // Every member restarts; the keys are used again.
    // The first stays down until its peers log it dropped, so the HA logs
    // have lines to scan.
    let mut c = c;
    for i in 0..3 {
        c.members[i].stop();
        if i == 0 {
            assert!(
                c.wait(Duration::from_secs(60), || c
                    .ha_log(1)
                    .contains("has dropped member")),
                "member 0's stop was not logged"
            );
        }
        c.members[i].spawn();
    }
    assert!(
        c.wait_in_sync(0, Duration::from_secs(60)),
        "the group is back in sync"
    );
    let p11 = Pkcs11::new(module_path()).expect("module loads again");
    let s = ha_slot_session(&p11);
    use_keys(&s);
    drop(s);
    p11.finalize().expect("C_Finalize");
    // Again after a power cut, with the WALs as they are.
    for m in c.members.iter_mut() {
        m.kill9();
    }
    let files = scan_files(c.work.path(), &needles, &secret_files);
    assert!(
        files.iter().any(|f| f.ends_with("ha.log")),
        "the HA log (the restarts' drop and recovery lines) was scanned"
    );
    for scanned in ["leak-backup.bak", "metrics-0.txt", "journal.jsonl"] {
        assert!(
            files.iter().any(|f| f.ends_with(scanned)),
            "{scanned} was scanned"
        );
    }

    if let Some(capture) = capture {
        let streams = capture.finish();
        let bytes: usize = streams.iter().map(Vec::len).sum();
        assert!(
            streams.len() >= 6,
            "the capture holds the client and replication links"
        );
        assert!(
            streams
                .iter()
                .any(|s| memchr::memmem::find(s, &[0x17, 0x03, 0x03]).is_some()),
            "the capture holds TLS application data"
        );
        for (i, stream) in streams.iter().enumerate() {
            if let Some(hit) = find(&needles, stream) {
                panic!("{hit} found on the wire (stream {i})");
            }
        }
        eprintln!(
            "{} TCP streams, {bytes} bytes captured: no secret found",
            streams.len()
        );
    }
}

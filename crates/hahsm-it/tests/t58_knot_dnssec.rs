//! Knot DNS (issue 15, item 5): DNSSEC with the zone keys in hahsm. Debian's
//! Knot DNS 3.2 keeps its keystore on the HA slot of a three-member group,
//! through GnuTLS's PKCS#11 layer (`keystore: backend: pkcs11`):
//!
//! - knotd generates its keys on the token (pkcs11-tool finds exactly those
//!   private keys there, sensitive and never extractable, and the zones'
//!   DNSKEYs are the token's public keys) and signs two zones, one with ECDSA
//!   P-256 and one with RSA-2048; an independent validator, ldns-verify-zone,
//!   accepts both signed zones and rejects a tampered copy;
//! - a member is killed (`kill -9`) in the middle of a full signing, while
//!   knotd re-signs both zones over and over; with it dead, a ZSK and then a
//!   KSK rollover of both zones complete: the zones are then signed by the
//!   new keys only, the old keys are gone from the token, and they validate;
//! - the member comes back holding the new keys and not the old ones, knotd's
//!   module takes it back, and a full re-sign validates;
//! - knotd's log shows no error or warning at all (no failed signing, no
//!   keystore error), and not one of its PKCS#11 calls failed but those
//!   GnuTLS makes fail itself, while its module did send a request to the
//!   killed member (and sent it again to another).
mod t20_pkcs11_support;
use base64::Engine;
use hahsm_it::cluster::{Cluster, GROUP, PIN};
use hahsm_it::{run_command, ProcessGroup, Run};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use t20_pkcs11_support::module_path;

/// The zones and their DNSSEC algorithms (RFC 8624 numbers).
const ECDSA_ZONE: &str = "example.test";
const RSA_ZONE: &str = "rsa.test";
const ZONES: [(&str, u8); 2] = [(ECDSA_ZONE, 13), (RSA_ZONE, 8)];
/// Names besides the apex, ns1, www and txt in each zone.
const HOSTS: usize = 200;

/// One DNSSEC key in Knot's KASP database (`keymgr -j … list`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct KaspKey {
    id: String,
    tag: u16,
    ksk: bool,
    algorithm: u8,
    ready: u64,
    active: u64,
    retire: u64,
    remove: u64,
}

impl KaspKey {
    /// Active and not on its way out.
    fn serving(&self, now: u64) -> bool {
        self.active != 0 && self.active <= now && self.retire == 0 && self.remove == 0
    }
}

/// What a signed zone, as knotd dumps it, says about its keys.
#[derive(Debug, Default)]
struct Signed {
    text: String,
    /// DNSKEY records: (key tag computed here, KSK?, public key bytes).
    dnskeys: Vec<(u16, bool, Vec<u8>)>,
    /// The key tags of the RRSIGs, by the type they cover.
    rrsigs: BTreeMap<String, BTreeSet<u16>>,
}

impl Signed {
    fn parse(text: String) -> Signed {
        let mut s = Signed::default();
        for line in text.lines().filter(|l| !l.starts_with(';')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.get(2) {
                Some(&"DNSKEY") => {
                    let flags: u16 = f[3].parse().expect("DNSKEY flags");
                    let alg: u8 = f[5].parse().expect("DNSKEY algorithm");
                    let key = base64::engine::general_purpose::STANDARD
                        .decode(f[6..].concat())
                        .expect("DNSKEY key in base64");
                    s.dnskeys.push((key_tag(flags, alg, &key), flags & 1 == 1, key));
                }
                Some(&"RRSIG") => {
                    s.rrsigs
                        .entry(f[3].to_string())
                        .or_default()
                        .insert(f[9].parse().expect("RRSIG key tag"));
                }
                _ => {}
            }
        }
        s.text = text;
        s
    }

    /// Every key tag that signs anything in the zone.
    fn signing_tags(&self) -> BTreeSet<u16> {
        self.rrsigs.values().flatten().copied().collect()
    }
}

/// RFC 4034, appendix B: the key tag of a DNSKEY (protocol 3).
fn key_tag(flags: u16, alg: u8, key: &[u8]) -> u16 {
    let mut rdata = vec![(flags >> 8) as u8, flags as u8, 3, alg];
    rdata.extend_from_slice(key);
    let mut ac: u32 = 0;
    for (i, b) in rdata.iter().enumerate() {
        ac += if i % 2 == 0 {
            u32::from(*b) << 8
        } else {
            u32::from(*b)
        };
    }
    ac += (ac >> 16) & 0xffff;
    (ac & 0xffff) as u16
}

/// The key material of a DNSKEY as it appears in the token's public key:
/// for RSA (RFC 3110) the modulus after the exponent, for ECDSA (RFC 6605)
/// the point's coordinates.
fn key_material(alg: u8, key: &[u8]) -> &[u8] {
    if alg == 8 {
        assert_ne!(key[0], 0, "a long RSA exponent");
        &key[1 + key[0] as usize..]
    } else {
        key
    }
}

struct Knot {
    dir: PathBuf,
    conf: PathBuf,
    module: PathBuf,
}

impl Knot {
    /// A Knot tool (or pkcs11-tool) with the module's logs for tools, apart
    /// from knotd's.
    fn tool(&self, program: &str, args: &[&str]) -> Run {
        run_command(
            Command::new(program)
                .args(args)
                .env("HAHSM_PKCS11_LOG", self.dir.join("tools-pkcs11.log"))
                .env("HAHSM_HA_LOG", self.dir.join("tools-ha.log"))
                .env("OPENSSL_CONF", "/dev/null"),
        )
    }

    fn knotc(&self, args: &[&str]) -> Run {
        let mut full = vec!["-c", self.conf.to_str().unwrap(), "-b"];
        full.extend_from_slice(args);
        let r = self.tool("knotc", &full);
        assert!(r.ok, "knotc {args:?}: {}{}", r.stdout, r.stderr);
        r
    }

    /// The zone's keys, from keymgr (which opens the keystore on the token).
    fn keys(&self, zone: &str) -> Vec<KaspKey> {
        let r = self.tool("keymgr", &["-c", self.conf.to_str().unwrap(), "-j", zone, "list"]);
        assert!(r.ok, "keymgr {zone} list: {}{}", r.stdout, r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("keymgr's JSON");
        let num = |k: &serde_json::Value, f: &str| k[f].as_u64().unwrap_or_else(|| panic!("{f} in {k}"));
        let mut keys: Vec<KaspKey> = v
            .as_array()
            .expect("a list of keys")
            .iter()
            .map(|k| KaspKey {
                id: k["id"].as_str().expect("id").to_string(),
                tag: num(k, "tag") as u16,
                ksk: k["ksk"].as_bool().expect("ksk"),
                algorithm: num(k, "algorithm") as u8,
                ready: num(k, "ready"),
                active: num(k, "active"),
                retire: num(k, "retire"),
                remove: num(k, "remove"),
            })
            .collect();
        keys.sort();
        keys
    }

    /// The zone as knotd serves it now, dumped to a file (`n` numbers the dumps).
    fn signed(&self, zone: &str, n: &str) -> (PathBuf, Signed) {
        let out = self.dir.join(format!("dump-{n}"));
        std::fs::create_dir_all(&out).unwrap();
        self.knotc(&["zone-flush", zone, "+outdir", out.to_str().unwrap()]);
        let file = out.join(format!("{zone}.zone"));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        (file, Signed::parse(text))
    }

    /// Private keys on the HA token, by CKA_ID: their "Access:" flags.
    fn token_private_keys(&self) -> BTreeMap<String, BTreeSet<String>> {
        let r = self.tool(
            "pkcs11-tool",
            &[
                "--module",
                self.module.to_str().unwrap(),
                "--token-label",
                GROUP,
                "--login",
                "--pin",
                PIN,
                "--list-objects",
                "--type",
                "privkey",
            ],
        );
        assert!(r.ok, "pkcs11-tool --list-objects: {}", r.stderr);
        let mut keys = BTreeMap::new();
        let mut id = None;
        for line in r.stdout.lines() {
            if !line.starts_with(' ') {
                id = None;
            } else if let Some(v) = line.trim().strip_prefix("ID:") {
                id = Some(v.trim().to_string());
            } else if let (Some(i), Some(v)) = (&id, line.trim().strip_prefix("Access:")) {
                keys.insert(i.clone(), v.split(',').map(|a| a.trim().to_string()).collect());
            }
        }
        keys
    }

    /// The public key with this CKA_ID on the HA token, as DER.
    fn token_public_key(&self, id: &str) -> Vec<u8> {
        let out = self.dir.join(format!("{id}.pub.der"));
        let r = self.tool(
            "pkcs11-tool",
            &[
                "--module",
                self.module.to_str().unwrap(),
                "--token-label",
                GROUP,
                "--read-object",
                "--type",
                "pubkey",
                "--id",
                id,
                "--output-file",
                out.to_str().unwrap(),
            ],
        );
        assert!(r.ok, "pkcs11-tool --read-object {id}: {}", r.stderr);
        std::fs::read(out).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("knotd.log")).unwrap_or_default()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// ldns-verify-zone's verdict on a zone file: Ok when it accepts it.
fn validate(file: &Path) -> Result<(), String> {
    let r = hahsm_it::run("ldns-verify-zone", &[file.to_str().unwrap()]);
    if r.ok && r.stdout.contains("Zone is verified and complete") {
        Ok(())
    } else {
        Err(format!("{}{}", r.stdout, r.stderr))
    }
}

/// Waits until `done` holds, panicking with `what` and knotd's log after `secs`.
fn wait_for(knot: &Knot, secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} within {secs} s; knotd's log:\n{}",
            knot.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Checks that the zone is signed by `keys` and no other key: its DNSKEYs
/// are exactly theirs, its RRSIGs made by them only (the KSK signs the
/// DNSKEY set, the ZSK everything else), each key's public half the token's,
/// and the validator accepts it.
fn check_signed_by(knot: &Knot, zone: &str, alg: u8, keys: &[KaspKey], n: &str) -> Signed {
    let (file, signed) = knot.signed(zone, n);
    let dnskey_tags: BTreeSet<u16> = signed.dnskeys.iter().map(|k| k.0).collect();
    let kasp_tags: BTreeSet<u16> = keys.iter().map(|k| k.tag).collect();
    assert_eq!(
        dnskey_tags, kasp_tags,
        "{zone}: the DNSKEYs are not the KASP's keys {keys:?}:\n{}",
        signed.text
    );
    let (ksk, zsk): (Vec<&KaspKey>, Vec<&KaspKey>) = keys.iter().partition(|k| k.ksk);
    let tags = |ks: &[&KaspKey]| ks.iter().map(|k| k.tag).collect::<BTreeSet<u16>>();
    for (covered, by) in &signed.rrsigs {
        let expected = if covered == "DNSKEY" {
            tags(&ksk)
        } else {
            tags(&zsk)
        };
        assert_eq!(
            by, &expected,
            "{zone}: the RRSIGs over {covered} are not by the expected keys:\n{}",
            signed.text
        );
    }
    assert!(signed.rrsigs.contains_key("SOA") && signed.rrsigs.contains_key("TXT"));
    for k in keys {
        assert_eq!(k.algorithm, alg, "{zone}: {k:?}");
        let (_, is_ksk, material) = signed
            .dnskeys
            .iter()
            .find(|d| d.0 == k.tag)
            .expect("the key's DNSKEY");
        assert_eq!(*is_ksk, k.ksk, "{zone}: SEP flag of {k:?}");
        let der = knot.token_public_key(&k.id);
        let material = key_material(alg, material);
        assert!(
            der.windows(material.len()).any(|w| w == material),
            "{zone}: the DNSKEY of {k:?} is not the token's public key {}",
            hex::encode(&der)
        );
    }
    validate(&file).unwrap_or_else(|e| panic!("ldns-verify-zone rejects {zone} ({n}): {e}"));
    signed
}

/// The private keys on the token are exactly the zones' keys, each
/// sensitive and never extractable.
fn check_token_holds(knot: &Knot, keys: &[KaspKey]) {
    let on_token = knot.token_private_keys();
    let ids: BTreeSet<String> = keys.iter().map(|k| k.id.clone()).collect();
    assert_eq!(
        on_token.keys().cloned().collect::<BTreeSet<_>>(),
        ids,
        "the token's private keys are not the zones' keys"
    );
    for (id, access) in &on_token {
        for flag in ["sensitive", "always sensitive", "never extractable", "local"] {
            assert!(access.contains(flag), "key {id} is not {flag}: {access:?}");
        }
        assert!(!access.contains("extractable"), "key {id} is extractable");
    }
}

/// Knot's current keys of every zone, once each zone has exactly one
/// serving KSK and one serving ZSK and none of the keys `gone` names
/// (confirming a KSK's submission, which Knot waits for with no parent to
/// check, when one is ready).
fn steady_keys(knot: &Knot, what: &str, gone: &BTreeSet<String>) -> BTreeMap<&'static str, Vec<KaspKey>> {
    let mut keys = BTreeMap::new();
    for (zone, _) in ZONES {
        wait_for(knot, 120, &format!("{zone}: {what}"), || {
            let ks = knot.keys(zone);
            let now = unix_now();
            if ks.iter().any(|k| k.ksk && k.ready != 0 && k.active == 0) {
                knot.knotc(&["zone-ksk-submitted", zone]);
            }
            let steady = ks.len() == 2
                && ks.iter().filter(|k| k.ksk && k.serving(now)).count() == 1
                && ks.iter().filter(|k| !k.ksk && k.serving(now)).count() == 1
                && ks.iter().all(|k| !gone.contains(&k.id));
            if steady {
                keys.insert(zone, ks);
            }
            steady
        });
    }
    keys
}

/// The ids of the keys of `keys` that `pick` picks.
fn ids(keys: &BTreeMap<&str, Vec<KaspKey>>, pick: impl Fn(&str, &KaspKey) -> bool) -> BTreeSet<String> {
    keys.iter()
        .flat_map(|(zone, ks)| ks.iter().filter(|k| pick(zone, k)).map(|k| k.id.clone()))
        .collect()
}

#[test]
fn knot_signs_zones_with_keys_in_hahsm_and_rolls_them_over_a_killed_member() {
    let started = Instant::now();
    let mut c = Cluster::new(3);
    let hahsm_conf = c.ha_only_conf(Some(1500));
    let dir = c.work.path().join("knot");
    for sub in ["run", "storage", "kasp", "zones"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let module = module_path();
    for (zone, _) in ZONES {
        // Short TTLs: each rollover step waits for them. HOSTS names make a
        // full signing take a while, so a member can die in the middle.
        let hosts: String = (1..=HOSTS)
            .map(|i| format!("host{i} A 198.51.100.{}\n", i % 250 + 1))
            .collect();
        std::fs::write(
            dir.join(format!("zones/{zone}.zone")),
            format!(
                "$ORIGIN {zone}.\n$TTL 2\n@ SOA ns1 hostmaster 1 60 30 3600 2\n@ NS ns1\n\
                 ns1 A 192.0.2.1\nwww A 192.0.2.2\ntxt TXT \"signed in hahsm\"\n{hosts}"
            ),
        )
        .unwrap();
    }
    let d = dir.display();
    let port = hahsm_it::free_port();
    let conf = dir.join("knot.conf");
    // The keystore is the HA slot's token; the policies' short delays make a
    // rollover take seconds; knotd runs as root, who can read the client's
    // key and certificate that HAHSM_CONF names.
    std::fs::write(
        &conf,
        format!(
            "server:\n  rundir: {d}/run\n  user: root:root\n  listen: 127.0.0.1@{port}\n\
             log:\n  - target: {d}/knotd.log\n    any: info\n\
             database:\n  storage: {d}/storage\n  kasp-db: {d}/kasp\n\
             keystore:\n  - id: hahsm\n    backend: pkcs11\n    config: \"pkcs11:token={GROUP};pin-value={PIN} {}\"\n\
             policy:\n\
             {}\
             template:\n  - id: default\n    storage: {d}/zones\n    file: \"%s.zone\"\n    zonefile-sync: -1\n    dnssec-signing: on\n\
             zone:\n  - domain: {ECDSA_ZONE}\n    dnssec-policy: ecdsa\n  - domain: {RSA_ZONE}\n    dnssec-policy: rsa\n",
            module.display(),
            [("ecdsa", "ecdsap256sha256"), ("rsa", "rsasha256")]
                .iter()
                .map(|(id, alg)| format!(
                    "  - id: {id}\n    keystore: hahsm\n    algorithm: {alg}\n    dnskey-ttl: 2s\n    zone-max-ttl: 2s\n\
                     \x20   propagation-delay: 1s\n    delete-delay: 0\n"
                ))
                .collect::<String>()
        ),
    )
    .unwrap();
    let knot = Knot {
        dir: dir.clone(),
        conf: conf.clone(),
        module,
    };

    let out = std::fs::File::create(dir.join("knotd.out")).unwrap();
    let knotd = ProcessGroup::spawn(
        Command::new("/usr/sbin/knotd")
            .arg("-c")
            .arg(&conf)
            .env("HAHSM_CONF", &hahsm_conf)
            .env("HAHSM_PKCS11_LOG", dir.join("knotd-pkcs11.log"))
            .env("HAHSM_HA_LOG", dir.join("knotd-ha.log"))
            // One log line per failed PKCS#11 call, with its reason.
            .env("HAHSM_PKCS11_DEBUG", "1")
            .stdout(out.try_clone().unwrap())
            .stderr(out),
        "knotd",
    );
    let pid = knotd.0.id();
    wait_for(&knot, 30, "knotd answers knotc", || {
        knot.tool("knotc", &["-c", conf.to_str().unwrap(), "status"]).ok
    });

    // Knot makes its keys on the token and signs; the validator accepts.
    let before = steady_keys(&knot, "first keys serving", &BTreeSet::new());
    let all = |ks: &BTreeMap<&str, Vec<KaspKey>>| ks.values().flatten().cloned().collect::<Vec<_>>();
    check_token_holds(&knot, &all(&before));
    for (zone, alg) in ZONES {
        let signed = check_signed_by(&knot, zone, alg, &before[zone], "first");
        // Not vacuous: the validator rejects the same zone with one record changed.
        let tampered = dir.join(format!("{zone}.tampered"));
        std::fs::write(&tampered, signed.text.replace("192.0.2.2", "192.0.2.3")).unwrap();
        assert!(
            validate(&tampered).is_err(),
            "ldns-verify-zone accepts a tampered {zone}"
        );
    }

    // A member dies while knotd re-signs both zones over and over, so that
    // signatures are being made on it.
    let stop = AtomicBool::new(false);
    let resigned = std::thread::scope(|s| {
        let resigner = s.spawn(|| {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                for (zone, _) in ZONES {
                    knot.knotc(&["zone-sign", zone]);
                }
                rounds += 1;
            }
            rounds
        });
        // The kill comes during the third full signing, once knotd has
        // found its keys and signs.
        let signings = || knot.log().matches("re-signing zone").count();
        let (first, since) = (signings(), Instant::now());
        while signings() < first + 3 && !resigner.is_finished() {
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "knotd does not re-sign"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        c.members[0].kill9();
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        resigner.join().expect("the re-signing thread")
    });
    let module_log = || std::fs::read_to_string(dir.join("knotd-pkcs11.log")).unwrap_or_default();
    let failed_over = module_log()
        .lines()
        .filter(|l| l.contains(" warn: hsm0: ") && l.contains("; trying another member"))
        .count();
    assert!(
        failed_over > 0,
        "no request of knotd's was on the killed member:\n{}",
        module_log()
    );
    for (zone, alg) in ZONES {
        check_signed_by(&knot, zone, alg, &before[zone], "resigned");
    }

    // With the member dead, Knot rolls both zones' ZSKs, then their KSKs.
    for (zone, _) in ZONES {
        knot.knotc(&["zone-key-rollover", zone, "zsk"]);
    }
    let mid = steady_keys(&knot, "the ZSK rollover done", &ids(&before, |_, k| !k.ksk));
    for (zone, _) in ZONES {
        knot.knotc(&["zone-key-rollover", zone, "ksk"]);
    }
    let after = steady_keys(&knot, "the KSK rollover done", &ids(&mid, |_, k| k.ksk));
    assert!(
        ids(&mid, |_, k| k.ksk).is_subset(&ids(&before, |_, k| k.ksk)),
        "a KSK changed in the ZSK rollover ({before:?} then {mid:?})"
    );
    assert!(
        ids(&after, |_, _| true).is_disjoint(&ids(&before, |_, _| true)),
        "a key survived the rollovers ({before:?} then {after:?})"
    );
    for (zone, alg) in ZONES {
        let old_tags: BTreeSet<u16> = before[zone].iter().map(|k| k.tag).collect();
        let signed = check_signed_by(&knot, zone, alg, &after[zone], "rolled");
        assert!(
            signed.signing_tags().is_disjoint(&old_tags),
            "{zone}: an old key still signs"
        );
    }
    check_token_holds(&knot, &all(&after));
    let ha = std::fs::read_to_string(dir.join("knotd-ha.log")).unwrap_or_default();
    assert!(
        ha.contains(&format!(
            "[{pid}] HA group: {GROUP} has dropped member: {}",
            c.serials[0]
        )),
        "knotd's module never met the killed member:\n{ha}"
    );

    // The member returns with the new keys and without the old ones.
    c.members[0].spawn();
    assert!(
        c.wait_in_sync(0, Duration::from_secs(60)),
        "member 0 did not catch up"
    );
    let listed = c.keys(0, &["list"]).expect_ok().stdout;
    for class in [" private-key ", " public-key "] {
        let on_member: BTreeSet<String> = listed
            .lines()
            .filter(|l| l.contains(class))
            .filter_map(|l| l.split_whitespace().last().map(str::to_string))
            .collect();
        assert_eq!(
            on_member,
            ids(&after, |_, _| true),
            "member 0's{class}objects after its return:\n{listed}"
        );
    }
    wait_for(&knot, 60, "knotd's module takes member 0 back", || {
        std::fs::read_to_string(dir.join("knotd-ha.log"))
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.contains(&format!("[{pid}]"))
                    && l.contains("succeeded")
                    && l.ends_with(&c.serials[0].to_string())
            })
    });
    for (zone, alg) in ZONES {
        knot.knotc(&["zone-sign", zone]);
        check_signed_by(&knot, zone, alg, &after[zone], "re-signed");
    }

    // Not one error or warning from knotd, and it signed each zone many times.
    let log = knot.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" error: ") || l.contains(" warning: ") || l.contains(" critical: "))
        .collect();
    assert!(bad.is_empty(), "knotd logged errors:\n{}", bad.join("\n"));
    // Not one PKCS#11 call of knotd's failed but those GnuTLS makes fail
    // itself: a second login of the token for each keystore it opens
    // (CKR_USER_ALREADY_LOGGED_IN), and a public key asked for attributes
    // only other classes have, such as CKA_SENSITIVE or CKA_VALUE
    // (CKR_ATTRIBUTE_TYPE_INVALID).
    let module_log = module_log();
    let failed: Vec<&str> = module_log
        .lines()
        .filter(|l| l.contains(" debug: C_"))
        .filter(|l| !l.ends_with("C_Login: CKR 0x100") && !l.ends_with("C_GetAttributeValue: CKR 0x12"))
        .collect();
    assert!(
        failed.is_empty(),
        "PKCS#11 calls of knotd failed:\n{}",
        failed.join("\n")
    );
    for (zone, _) in ZONES {
        let signs = log
            .lines()
            .filter(|l| l.contains(&format!("[{zone}.] DNSSEC, successfully signed")))
            .count();
        eprintln!("{zone}: signed {signs} times ({resigned} full re-signings across the kill, {failed_over} requests failed over)");
        assert!(signs >= 4, "{zone}: only {signs} signings:\n{log}");
    }
    eprintln!("t58 took {:.0?}", started.elapsed());
}

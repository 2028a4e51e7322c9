//! The member's metrics, in the OpenMetrics text format (prometheus-client).
//!
//! Two kinds:
//! - counters and histograms recorded as things happen: operations by
//!   mechanism and their latency, failed logins, alerts;
//! - gauges read from the member's state at each scrape: each group's
//!   members (state, lag), in-sync, degraded, policy drift, partitions and
//!   the store's size. Reading at scrape time means a gauge can never be
//!   stale, and a member that left the group leaves the metrics with it.
use crate::sync::Recover;
use hahsm_proto::admin::MemberState;
use hahsm_proto::admin::{GroupStatus, PartitionSummary};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// What a scrape reads from the member's state: the caller (the metrics
/// endpoint) gathers it, so the gauges are current at every scrape.
pub struct ScrapedState {
    /// The store's files on disk, write-ahead log included.
    pub store_bytes: u64,
    pub partitions: Vec<PartitionSummary>,
    pub groups: Vec<GroupStatus>,
    /// The end of the member's TLS certificate's validity (Unix seconds),
    /// when it can be read.
    pub certificate_not_after: Option<i64>,
}

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    operation: &'static str,
    mechanism: Cow<'static, str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpTimeLabels {
    operation: &'static str,
    mechanism: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    partition: String,
    user: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    group: String,
    member: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberStateLabels {
    group: String,
    member: String,
    name: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    kind: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
    /// "true" when the member runs AWS-LC's FIPS module.
    fips: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 100 µs to about 13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    /// One scrape at a time: a scrape clears and refills the state gauges.
    scrape: Mutex<()>,
    operations: Family<OpLabels, Counter>,
    operation_seconds: Family<OpTimeLabels, Histogram, fn() -> Histogram>,
    failed_logins: Family<LoginLabels, Counter>,
    alerts: Family<AlertLabels, Counter>,
    alert_delivery_failures: Family<TargetLabels, Counter>,
    alerts_dropped: Counter,
    store_bytes: Gauge,
    partition_objects: Family<PartitionLabels, Gauge>,
    partition_parsed_keys: Family<PartitionLabels, Gauge>,
    partition_key_loads: Family<PartitionLabels, Gauge>,
    partition_write_commits: Family<PartitionLabels, Gauge>,
    partition_log_entries: Family<PartitionLabels, Gauge>,
    partition_log_compacted: Family<PartitionLabels, Gauge>,
    partition_snapshots_installed: Family<PartitionLabels, Gauge>,
    partition_writes_committed: Family<PartitionLabels, Gauge>,
    partition_failed_logins: Family<PartitionLabels, Gauge>,
    partition_pin_locked: Family<PartitionLabels, Gauge>,
    group_in_sync: Family<GroupLabels, Gauge>,
    group_degraded: Family<GroupLabels, Gauge>,
    group_policy_drift: Family<GroupLabels, Gauge>,
    group_clock_problems: Family<GroupLabels, Gauge>,
    clock_offset_seconds: Family<MemberLabels, FloatGauge>,
    member_up: Family<MemberLabels, Gauge>,
    member_state: Family<MemberStateLabels, Gauge>,
    lag_operations: Family<MemberLabels, Gauge>,
    lag_seconds: Family<MemberLabels, FloatGauge>,
    certificate_not_after: Family<CertificateLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("hahsm");
        let m = Metrics {
            registry: Registry::default(),
            scrape: Mutex::new(()),
            operations: Family::default(),
            operation_seconds: Family::new_with_constructor(latency_histogram),
            failed_logins: Family::default(),
            alerts: Family::default(),
            alert_delivery_failures: Family::default(),
            alerts_dropped: Counter::default(),
            store_bytes: Gauge::default(),
            partition_objects: Family::default(),
            partition_parsed_keys: Family::default(),
            partition_key_loads: Family::default(),
            partition_write_commits: Family::default(),
            partition_log_entries: Family::default(),
            partition_log_compacted: Family::default(),
            partition_snapshots_installed: Family::default(),
            partition_writes_committed: Family::default(),
            partition_failed_logins: Family::default(),
            partition_pin_locked: Family::default(),
            group_in_sync: Family::default(),
            group_degraded: Family::default(),
            group_policy_drift: Family::default(),
            member_up: Family::default(),
            member_state: Family::default(),
            lag_operations: Family::default(),
            group_clock_problems: Family::default(),
            clock_offset_seconds: Family::default(),
            lag_seconds: Family::default(),
            certificate_not_after: Family::default(),
        };
        r.register(
            "build",
            "The member's build: its version, and whether it runs AWS-LC's FIPS module",
            prometheus_client::metrics::info::Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
                fips: if hahsm_crypto::fips_mode() {
                    "true"
                } else {
                    "false"
                },
            }),
        );
        r.register(
            "operations",
            "Client requests handled, by operation, mechanism and result",
            m.operations.clone(),
        );
        r.register(
            "operation_duration_seconds",
            "Time to handle a client request, by operation and mechanism",
            m.operation_seconds.clone(),
        );
        r.register(
            "failed_logins",
            "Failed partition logins (wrong or locked PIN) since the member started",
            m.failed_logins.clone(),
        );
        r.register("alerts", "Alerts raised, by kind and status", m.alerts.clone());
        r.register(
            "alert_delivery_failures",
            "Failed attempts to deliver an alert, by target (exec, webhook, alertmanager)",
            m.alert_delivery_failures.clone(),
        );
        r.register(
            "alerts_dropped",
            "Alerts dropped because the alert queue was full",
            m.alerts_dropped.clone(),
        );
        r.register(
            "store_size_bytes",
            "Size of the member's store on disk (database and write-ahead log)",
            m.store_bytes.clone(),
        );
        r.register(
            "partition_objects",
            "Live token objects in an activated partition",
            m.partition_objects.clone(),
        );
        r.register(
            "partition_parsed_keys",
            "Keys an activated partition holds parsed in its key cache (limits.key_cache_entries at most)",
            m.partition_parsed_keys.clone(),
        );
        r.register(
            "partition_key_loads",
            "Keys parsed since the partition was activated: much more than partition_parsed_keys under steady load means the key cache is too small",
            m.partition_key_loads.clone(),
        );
        r.register(
            "partition_write_commits",
            "Store transactions (each one sync to disk) that committed this member's own writes since activation",
            m.partition_write_commits.clone(),
        );
        r.register(
            "partition_writes_committed",
            "This member's own writes committed since activation: divided by partition_write_commits, the writes per sync (group commit)",
            m.partition_writes_committed.clone(),
        );
        r.register(
            "partition_log_entries",
            "Operations in the partition's op log (bounded by compaction: replication.compact_after_ms and log_retention_ms)",
            m.partition_log_entries.clone(),
        );
        r.register(
            "partition_log_compacted",
            "Operations compacted out of the op log, or covered by a peer's snapshot; their effects stay in the objects",
            m.partition_log_compacted.clone(),
        );
        r.register(
            "partition_snapshots_installed",
            "Snapshots from peers installed since activation: a member that was away longer than the log retention, or new, catches up so",
            m.partition_snapshots_installed.clone(),
        );
        r.register(
            "partition_failed_logins",
            "Consecutive failed logins counted toward the lockout (durable)",
            m.partition_failed_logins.clone(),
        );
        r.register(
            "partition_pin_locked",
            "1 when the partition's PIN is locked after too many failed logins",
            m.partition_pin_locked.clone(),
        );
        r.register(
            "group_in_sync",
            "1 when every member of the group is alive with the same operations and objects",
            m.group_in_sync.clone(),
        );
        r.register(
            "group_degraded",
            "1 when a member of the group is down or lagging",
            m.group_degraded.clone(),
        );
        r.register(
            "group_policy_drift",
            "Number of HSM or partition policies whose value differs between members",
            m.group_policy_drift.clone(),
        );
        r.register(
            "group_clock_problems",
            "Clocks further off than the maximum offset: peers this member refuses, and itself when it takes no writes",
            m.group_clock_problems.clone(),
        );
        r.register(
            "member_clock_offset_seconds",
            "The group member's wall clock minus this member's, as last measured by a heartbeat",
            m.clock_offset_seconds.clone(),
        );
        r.register(
            "member_up",
            "1 when this member hears from the group member (always 1 for itself)",
            m.member_up.clone(),
        );
        r.register(
            "member_state",
            "The group member's state as this member sees it: 1 for the current state",
            m.member_state.clone(),
        );
        r.register(
            "replication_lag_operations",
            "Operations the group member lacks, against the most advanced member known here",
            m.lag_operations.clone(),
        );
        r.register(
            "replication_lag_seconds",
            "How long the group member has lacked operations (0 when it lacks none)",
            m.lag_seconds.clone(),
        );
        r.register(
            "certificate_not_after_timestamp_seconds",
            "When the member's TLS certificate (client and peer links) expires, in Unix seconds",
            m.certificate_not_after.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Records one client request.
    pub fn operation(&self, operation: &'static str, mechanism: Option<u64>, ok: bool, took: Duration) {
        let mechanism = mechanism_label(mechanism);
        self.operations
            .get_or_create(&OpLabels {
                operation,
                mechanism: mechanism.clone(),
                result: if ok { "ok" } else { "error" },
            })
            .inc();
        self.operation_seconds
            .get_or_create(&OpTimeLabels { operation, mechanism })
            .observe(took.as_secs_f64());
    }

    pub fn failed_login(&self, partition: &str, so: bool) {
        self.failed_logins
            .get_or_create(&LoginLabels {
                partition: partition.to_string(),
                user: if so { "so" } else { "user" },
            })
            .inc();
    }

    /// An alert of `kind` (e.g. `member-down`) was raised as `status`.
    pub fn alert_raised(&self, kind: &'static str, status: &'static str) {
        self.alerts.get_or_create(&AlertLabels { kind, status }).inc();
    }

    /// Creates the counter of alerts of `kind` raised as `status` at 0, so
    /// that the first one is an increase a `rate()` sees.
    pub fn declare_alert(&self, kind: &'static str, status: &'static str) {
        let _ = self.alerts.get_or_create(&AlertLabels { kind, status });
    }

    /// Creates a target's delivery-failure counter at 0 (a configured target).
    pub fn declare_delivery_target(&self, target: &str) {
        let _ = self.alert_delivery_failures.get_or_create(&TargetLabels {
            target: target.to_string(),
        });
    }

    pub fn alert_delivery_failed(&self, target: &str) {
        self.alert_delivery_failures
            .get_or_create(&TargetLabels {
                target: target.to_string(),
            })
            .inc();
    }

    pub fn alert_dropped(&self) {
        self.alerts_dropped.inc();
    }

    /// The scrape: reads the member's state into the gauges, then encodes
    /// every metric.
    pub fn render(&self, state: &ScrapedState) -> String {
        let _one = self.scrape.lock_or_recover();
        self.read_state(state);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String cannot fail; say so rather than serve half.
            return "# EOF\n".to_string();
        }
        out
    }

    fn read_state(&self, state: &ScrapedState) {
        self.store_bytes.set(state.store_bytes as i64);
        // Absent, rather than 0 (long expired), when it cannot be read.
        self.certificate_not_after.clear();
        if let Some(t) = state.certificate_not_after {
            self.certificate_not_after
                .get_or_create(&CertificateLabels {
                    certificate: "server",
                })
                .set(t);
        }
        for f in [
            &self.partition_objects,
            &self.partition_parsed_keys,
            &self.partition_key_loads,
            &self.partition_write_commits,
            &self.partition_writes_committed,
            &self.partition_log_entries,
            &self.partition_log_compacted,
            &self.partition_snapshots_installed,
            &self.partition_failed_logins,
            &self.partition_pin_locked,
        ] {
            f.clear();
        }
        for p in &state.partitions {
            // The failed-login counters of every partition exist at 0 from
            // the first scrape that sees it: no scrape can tell that from
            // creating them when it activates, and the first failed login is
            // an increase a `rate()` sees. (Counters are never cleared.)
            for user in ["user", "so"] {
                let _ = self.failed_logins.get_or_create(&LoginLabels {
                    partition: p.name.clone(),
                    user,
                });
            }
            let l = PartitionLabels {
                partition: p.name.clone(),
            };
            if p.activated {
                self.partition_objects
                    .get_or_create(&l)
                    .set(p.object_count as i64);
                self.partition_parsed_keys
                    .get_or_create(&l)
                    .set(p.parsed_keys as i64);
                self.partition_key_loads.get_or_create(&l).set(p.key_loads as i64);
                self.partition_write_commits
                    .get_or_create(&l)
                    .set(p.write_commits as i64);
                self.partition_writes_committed
                    .get_or_create(&l)
                    .set(p.writes_committed as i64);
                self.partition_log_entries
                    .get_or_create(&l)
                    .set(p.log_entries as i64);
                self.partition_log_compacted
                    .get_or_create(&l)
                    .set(p.log_compacted as i64);
                self.partition_snapshots_installed
                    .get_or_create(&l)
                    .set(p.snapshots_installed as i64);
            }
            self.partition_failed_logins
                .get_or_create(&l)
                .set(i64::from(p.failed_logins));
            self.partition_pin_locked
                .get_or_create(&l)
                .set(i64::from(p.pin_locked));
        }
        for f in [
            &self.group_in_sync,
            &self.group_degraded,
            &self.group_policy_drift,
            &self.group_clock_problems,
        ] {
            f.clear();
        }
        self.clock_offset_seconds.clear();
        self.member_up.clear();
        self.member_state.clear();
        self.lag_operations.clear();
        self.lag_seconds.clear();
        for g in &state.groups {
            let gl = GroupLabels {
                group: g.label.clone(),
            };
            self.group_in_sync.get_or_create(&gl).set(i64::from(g.in_sync));
            self.group_degraded.get_or_create(&gl).set(i64::from(g.degraded));
            self.group_policy_drift
                .get_or_create(&gl)
                .set(g.policy_drift.len() as i64);
            self.group_clock_problems
                .get_or_create(&gl)
                .set(g.clock_problems.len() as i64);
            for m in &g.members {
                let ml = MemberLabels {
                    group: g.label.clone(),
                    member: m.serial.to_string(),
                    name: m.name.clone(),
                };
                self.member_up
                    .get_or_create(&ml)
                    .set(i64::from(m.state != MemberState::Down));
                for state in MemberState::ALL {
                    self.member_state
                        .get_or_create(&MemberStateLabels {
                            group: g.label.clone(),
                            member: m.serial.to_string(),
                            name: m.name.clone(),
                            state: state.name(),
                        })
                        .set(i64::from(m.state == state));
                }
                self.lag_operations
                    .get_or_create(&ml)
                    .set(m.lag_operations as i64);
                self.lag_seconds.get_or_create(&ml).set(m.lag_ms as f64 / 1000.0);
                if let Some(ms) = m.clock_offset_ms {
                    self.clock_offset_seconds
                        .get_or_create(&ml)
                        .set(ms as f64 / 1000.0);
                }
            }
        }
    }
}

/// The store's database file with its write-ahead log and shared memory.
/// The mechanisms' names as `hahsm keys --mech` spells them.
const MECHANISM_NAMES: &[&str] = &[
    "RSA-PKCS",
    "RSA-X-509",
    "SHA1-RSA-PKCS",
    "SHA224-RSA-PKCS",
    "SHA256-RSA-PKCS",
    "SHA384-RSA-PKCS",
    "SHA512-RSA-PKCS",
    "RSA-PKCS-PSS",
    "SHA1-RSA-PKCS-PSS",
    "SHA224-RSA-PKCS-PSS",
    "SHA256-RSA-PKCS-PSS",
    "SHA384-RSA-PKCS-PSS",
    "SHA512-RSA-PKCS-PSS",
    "RSA-PKCS-OAEP",
    "ECDSA",
    "ECDSA-SHA1",
    "ECDSA-SHA224",
    "ECDSA-SHA256",
    "ECDSA-SHA384",
    "ECDSA-SHA512",
    "ECDH1-DERIVE",
    "EDDSA",
    "ML-DSA",
    "ML-KEM",
    "AES-ECB",
    "AES-CBC",
    "AES-CBC-PAD",
    "AES-GCM",
    "AES-KEY-WRAP",
    "AES-KEY-WRAP-PAD",
    "SHA256-HMAC",
    "SHA384-HMAC",
    "SHA512-HMAC",
    "SHA-1",
    "SHA224",
    "SHA256",
    "SHA384",
    "SHA512",
];

/// Key generation mechanisms, which `--mech` does not name.
const KEYGEN_NAMES: &[(u64, &str)] = &[
    (
        hahsm_token::ck::CKM_RSA_PKCS_KEY_PAIR_GEN,
        "RSA-PKCS-KEY-PAIR-GEN",
    ),
    (hahsm_token::ck::CKM_EC_KEY_PAIR_GEN, "EC-KEY-PAIR-GEN"),
    (
        hahsm_token::ck::CKM_EC_EDWARDS_KEY_PAIR_GEN,
        "EC-EDWARDS-KEY-PAIR-GEN",
    ),
    (hahsm_token::ck::CKM_ML_DSA_KEY_PAIR_GEN, "ML-DSA-KEY-PAIR-GEN"),
    (hahsm_token::ck::CKM_ML_KEM_KEY_PAIR_GEN, "ML-KEM-KEY-PAIR-GEN"),
    (hahsm_token::ck::CKM_AES_KEY_GEN, "AES-KEY-GEN"),
    (
        hahsm_token::ck::CKM_GENERIC_SECRET_KEY_GEN,
        "GENERIC-SECRET-KEY-GEN",
    ),
];

fn mechanism_label(mech: Option<u64>) -> Cow<'static, str> {
    static NAMES: OnceLock<HashMap<u64, &'static str>> = OnceLock::new();
    let Some(mech) = mech else {
        return Cow::Borrowed("none");
    };
    let names = NAMES.get_or_init(|| {
        MECHANISM_NAMES
            .iter()
            .filter_map(|n| hahsm_token::mechanism::by_name(n).map(|m| (m, *n)))
            .chain(KEYGEN_NAMES.iter().copied())
            .collect()
    });
    match names.get(&mech) {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(format!("0x{mech:08x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_mechanism_name_is_one_the_cli_knows() {
        for n in MECHANISM_NAMES {
            assert!(hahsm_token::mechanism::by_name(n).is_some(), "{n}");
        }
    }

    #[test]
    fn mechanism_labels_are_the_cli_names() {
        assert_eq!(
            mechanism_label(Some(hahsm_token::ck::CKM_ECDSA)),
            "ECDSA".to_string()
        );
        assert_eq!(mechanism_label(None), "none".to_string());
        assert_eq!(mechanism_label(Some(0x8000_1234)), "0x80001234".to_string());
    }

    #[test]
    fn operations_are_counted_and_timed_by_mechanism() {
        let m = Metrics::new();
        m.operation(
            "sign",
            Some(hahsm_token::ck::CKM_ECDSA),
            true,
            Duration::from_millis(2),
        );
        m.operation("sign", Some(hahsm_token::ck::CKM_ECDSA), false, Duration::ZERO);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        assert!(
            out.contains(r#"hahsm_operations_total{operation="sign",mechanism="ECDSA",result="ok"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"hahsm_operation_duration_seconds_count{operation="sign",mechanism="ECDSA"} 2"#),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn the_build_and_the_certificates_end_are_exported_and_an_unreadable_one_is_absent() {
        let m = Metrics::new();
        let mut state = ScrapedState {
            store_bytes: 0,
            partitions: Vec::new(),
            groups: Vec::new(),
            certificate_not_after: Some(2_019_686_400),
        };
        let out = m.render(&state);
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            out.contains(&format!(
                "hahsm_build_info{{version=\"{version}\",fips=\"{}\"}} 1\n",
                hahsm_crypto::fips_mode()
            )),
            "{out}"
        );
        assert!(
            out.contains(
                "hahsm_certificate_not_after_timestamp_seconds{certificate=\"server\"} 2019686400\n"
            ),
            "{out}"
        );
        state.certificate_not_after = None;
        let out = m.render(&state);
        assert!(
            !out.contains("hahsm_certificate_not_after_timestamp_seconds{"),
            "{out}"
        );
    }
}

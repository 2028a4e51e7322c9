//! Monitoring that needs no application: the member's metrics, its alerts,
//! and the watch loop that turns lasting conditions (out of sync, policy
//! drift) into alerts. Member down and recovered come straight from the
//! replicator's failure detector (the HA log), so they fire as soon as the
//! member is declared down.
//!
//! The metrics endpoint is a small HTTP/1.1 server (hyper) that answers
//! `GET /metrics` and nothing else, bound to localhost unless configured
//! otherwise.
use crate::alerts::{Alert, AlertKind, AlertStatus, Alerts};
use crate::appliance::Appliance;
use crate::metrics::Metrics;
use bytes::Bytes;
use hahsm_proto::admin::MemberState;
use hahsm_proto::peer::PolicySnapshot;
use hahsm_token::policy::{PolicyDef, HSM_POLICIES, PARTITION_POLICIES};
use http_body_util::Full;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How often the watch loop looks at the groups.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Scrape connections served at once; more wait in the TCP backlog.
const MAX_SCRAPERS: usize = 32;
/// A scraper sends its request at once: one that has not within this long
/// is closed, so idle connections cannot hold the endpoint.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Any scrape connection is closed after this long.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The member's metrics and alerts.
pub struct Monitor {
    pub metrics: Arc<Metrics>,
    pub alerts: Alerts,
    /// `http://addr/metrics`, once the endpoint is bound.
    metrics_url: OnceLock<String>,
}

impl Monitor {
    pub fn new(serial: u64) -> Monitor {
        Monitor {
            metrics: Arc::new(Metrics::new()),
            alerts: Alerts::new(serial),
            metrics_url: OnceLock::new(),
        }
    }

    pub fn raise(&self, alert: Alert) {
        self.alerts.raise(&self.metrics, alert);
    }

    pub fn metrics_url(&self) -> Option<String> {
        self.metrics_url.get().cloned()
    }
}

/// Binds the metrics endpoint, if configured, and records its address in
/// `<data_dir>/metrics.addr`. A port in use does not stop the member: the
/// HSM keeps serving, and the error is logged.
pub async fn start_metrics(app: &Arc<Appliance>) {
    let listen = app.config.monitoring.metrics_listen.trim().to_string();
    let _ = std::fs::remove_file(app.config.metrics_addr_path());
    if listen.is_empty() {
        info!("metrics endpoint off (monitoring.metrics_listen is empty)");
        return;
    }
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            warn!(listen, error = %e, "cannot bind the metrics endpoint; the member runs without it");
            return;
        }
    };
    let Ok(bound) = listener.local_addr() else {
        return;
    };
    let url = format!("http://{bound}/metrics");
    if let Err(e) = crate::write_atomically(&app.config.metrics_addr_path(), &bound.to_string()) {
        warn!(error = %e, "cannot write metrics.addr");
    }
    let _ = app.monitor.metrics_url.set(url.clone());
    if !bound.ip().is_loopback() {
        warn!(%bound, "the metrics endpoint is reachable from other hosts: it needs no credentials");
    }
    info!(metrics = %url, "metrics endpoint ready");
    tokio::spawn(serve_metrics(app.clone(), listener));
}

async fn serve_metrics(app: Arc<Appliance>, listener: tokio::net::TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&app, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

fn answer<B>(app: &Appliance, req: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    let reply = |status: hyper::StatusCode, content_type: &str, body: String| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => reply(
            hyper::StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            app.monitor.metrics.render(app),
        ),
        (&hyper::Method::GET, _) => reply(
            hyper::StatusCode::NOT_FOUND,
            "text/plain",
            "the metrics are at /metrics\n".into(),
        ),
        _ => reply(
            hyper::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ),
    }
}

/// A lasting condition of one group, and whether its alert has fired.
#[derive(Default)]
struct Condition {
    since: Option<Instant>,
    fired: bool,
}

impl Condition {
    /// Whether to fire (Some(Firing)) or resolve (Some(Resolved)) now.
    fn update(&mut self, holds: bool, after: Duration) -> Option<AlertStatus> {
        if holds {
            let since = *self.since.get_or_insert_with(Instant::now);
            if !self.fired && since.elapsed() >= after {
                self.fired = true;
                return Some(AlertStatus::Firing);
            }
            None
        } else {
            self.since = None;
            if std::mem::take(&mut self.fired) {
                return Some(AlertStatus::Resolved);
            }
            None
        }
    }
}

#[derive(Default)]
struct GroupWatch {
    out_of_sync: Condition,
    drift: Condition,
}

/// The watch loop: keeps each group's view of this member's policies
/// current (heartbeats carry it to the peers), and raises the out-of-sync
/// and policy-drift alerts when those conditions last.
pub async fn watch(app: Arc<Appliance>) {
    let cfg = app.config.monitoring.clone();
    let out_of_sync_after = Duration::from_secs(cfg.out_of_sync_after_secs);
    let drift_after = Duration::from_secs(cfg.policy_drift_after_secs);
    let mut groups: HashMap<String, GroupWatch> = HashMap::new();
    loop {
        crate::replication::refresh_policies(&app);
        let statuses = crate::replication::show(&app, None).unwrap_or_default();
        groups.retain(|label, _| statuses.iter().any(|g| &g.label == label));
        for g in statuses {
            let w = groups.entry(g.label.clone()).or_default();
            if let Some(status) = w.out_of_sync.update(!g.in_sync, out_of_sync_after) {
                let summary = match status {
                    AlertStatus::Firing => format!(
                        "HA group {} has been out of sync for {} s: {}",
                        g.label,
                        cfg.out_of_sync_after_secs,
                        out_of_sync_reasons(&g).join("; ")
                    ),
                    AlertStatus::Resolved => format!("HA group {} is in sync again", g.label),
                };
                app.monitor.raise(
                    Alert::new(AlertKind::OutOfSync, status, summary)
                        .group(&g.label)
                        .partition(&g.partition),
                );
            }
            if let Some(status) = w.drift.update(!g.policy_drift.is_empty(), drift_after) {
                let summary = match status {
                    AlertStatus::Firing => format!(
                        "HA group {}: policies differ between members: {}",
                        g.label,
                        g.policy_drift.join("; ")
                    ),
                    AlertStatus::Resolved => {
                        format!("HA group {}: every member has the same policies again", g.label)
                    }
                };
                app.monitor.raise(
                    Alert::new(AlertKind::PolicyDrift, status, summary)
                        .group(&g.label)
                        .partition(&g.partition),
                );
            }
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

fn out_of_sync_reasons(g: &hahsm_proto::admin::GroupStatus) -> Vec<String> {
    let mut out: Vec<String> = g
        .members
        .iter()
        .filter(|m| m.state == MemberState::Down || m.lag_operations > 0 || m.state == MemberState::Lagging)
        .map(|m| match m.state {
            MemberState::Down => format!("member {} ({}) is down", m.serial, m.name),
            _ => format!(
                "member {} ({}) lacks {} operation(s)",
                m.serial, m.name, m.lag_operations
            ),
        })
        .collect();
    if out.is_empty() {
        out.push("members hold different objects (digests differ)".into());
    }
    out
}

/// Operations `have` lacks against `best`, summed over origins.
pub fn lag_operations(have: &[(u64, u64)], best: &BTreeMap<u64, u64>) -> u64 {
    let have: BTreeMap<u64, u64> = have.iter().copied().collect();
    best.iter()
        .map(|(origin, top)| top.saturating_sub(have.get(origin).copied().unwrap_or(0)))
        .sum()
}

/// The highest sequence number per origin over all version vectors.
pub fn best_vector<'a>(vectors: impl IntoIterator<Item = &'a [(u64, u64)]>) -> BTreeMap<u64, u64> {
    let mut best = BTreeMap::new();
    for vv in vectors {
        for (origin, seq) in vv {
            let e = best.entry(*origin).or_insert(0);
            *e = (*e).max(*seq);
        }
    }
    best
}

/// Picks the HSM or the partition policies out of a snapshot.
type PolicyTable = fn(&PolicySnapshot) -> &Vec<(u32, u64)>;

/// One line per policy whose value differs between members: `members` are
/// (name, policies); members never heard from (empty policies) are left out.
pub fn policy_drift(members: &[(String, &PolicySnapshot)]) -> Vec<String> {
    let known: Vec<&(String, &PolicySnapshot)> = members.iter().filter(|(_, p)| !p.is_empty()).collect();
    if known.len() < 2 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let tables: [(&str, &[PolicyDef], PolicyTable); 2] = [
        ("HSM", HSM_POLICIES, |p| &p.hsm),
        ("partition", PARTITION_POLICIES, |p| &p.partition),
    ];
    for (what, table, pick) in tables {
        let mut numbers: Vec<u32> = known
            .iter()
            .flat_map(|(_, p)| pick(p).iter().map(|(n, _)| *n))
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        for n in numbers {
            let values: Vec<(String, Option<u64>)> = known
                .iter()
                .map(|(name, p)| {
                    (
                        name.clone(),
                        pick(p).iter().find(|(k, _)| *k == n).map(|(_, v)| *v),
                    )
                })
                .collect();
            if values.windows(2).all(|w| w[0].1 == w[1].1) {
                continue;
            }
            let policy = table
                .iter()
                .find(|d| d.number == n)
                .map(|d| format!("{what} policy {n} ({})", d.name))
                .unwrap_or_else(|| format!("{what} policy {n}"));
            let listed: Vec<String> = values
                .iter()
                .map(|(name, v)| match v {
                    Some(v) => format!("{name}={v}"),
                    None => format!("{name}=unset"),
                })
                .collect();
            out.push(format!("{policy}: {}", listed.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(hsm: &[(u32, u64)], partition: &[(u32, u64)]) -> PolicySnapshot {
        PolicySnapshot {
            hsm: hsm.to_vec(),
            partition: partition.to_vec(),
        }
    }

    #[test]
    fn drift_names_the_policy_and_every_members_value() {
        let a = snap(&[(7, 1), (16, 1)], &[(15, 10), (23, 1)]);
        let b = snap(&[(7, 1), (16, 1)], &[(15, 3), (23, 1)]);
        let never_heard = PolicySnapshot::default();
        let lines = policy_drift(&[
            ("hsm0".into(), &a),
            ("hsm1".into(), &b),
            ("hsm2".into(), &never_heard),
        ]);
        assert_eq!(
            lines,
            vec!["partition policy 15 (max-failed-logins): hsm0=10, hsm1=3".to_string()]
        );
        assert!(policy_drift(&[("hsm0".into(), &a), ("hsm1".into(), &a.clone())]).is_empty());
        let c = snap(&[(7, 1)], &[(15, 10), (23, 1)]);
        assert_eq!(
            policy_drift(&[("hsm0".into(), &a), ("hsm1".into(), &c)]),
            vec!["HSM policy 16 (allow-network-replication): hsm0=1, hsm1=unset".to_string()]
        );
    }

    #[test]
    fn lag_counts_missing_operations_per_origin() {
        let a = [(1, 10), (2, 5)];
        let b = [(1, 7)];
        let best = best_vector([&a[..], &b[..]]);
        assert_eq!(lag_operations(&a, &best), 0);
        assert_eq!(lag_operations(&b, &best), 3 + 5);
    }

    #[test]
    fn a_condition_fires_once_after_its_grace_and_resolves_once() {
        let mut c = Condition::default();
        assert_eq!(c.update(true, Duration::from_secs(3600)), None);
        assert_eq!(c.update(false, Duration::ZERO), None);
        assert_eq!(c.update(true, Duration::ZERO), Some(AlertStatus::Firing));
        assert_eq!(c.update(true, Duration::ZERO), None);
        assert_eq!(c.update(false, Duration::ZERO), Some(AlertStatus::Resolved));
        assert_eq!(c.update(false, Duration::ZERO), None);
    }
}

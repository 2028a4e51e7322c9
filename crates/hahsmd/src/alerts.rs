//! Alerts: member down, member recovered, out of sync, policy drift, PIN
//! lockout. Raised by the member itself, so they fire with no application
//! and no operator connected (report §5.2.3).
//!
//! Raising an alert never blocks: it goes into a bounded queue, and a
//! dispatcher task delivers each alert, in a task of its own, to the
//! configured command and webhook, retrying with doubling back-off. Every
//! alert is also appended to `<data_dir>/alerts.jsonl` and logged.
//!
//! Alertmanager is told a state rather than events: the alerts that fire
//! (sent again every `alertmanager_resend_secs`, since it forgets an alert
//! that is not), and those that ended (sent with their end until delivered).
//! `AmState` keeps that state without I/O; one sender task POSTs all of it
//! at each change and each re-send, one request at a time, so that an older
//! state can never arrive after a newer one.
//!
//! An alert carries names, serials and counts only: never a PIN, a secret or
//! key material (its fields are all plain, non-secret values).
use crate::config::{AlertTargets, WebhookUrl};
use crate::metrics::Metrics;
use crate::sync::{Recover, RecoverRw};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Alerts waiting for the dispatcher; more are dropped (and counted).
const QUEUE: usize = 1024;
/// Deliveries in progress at once.
const CONCURRENT_DELIVERIES: usize = 16;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    MemberDown,
    MemberRecovered,
    OutOfSync,
    PolicyDrift,
    PinLockout,
    ClockOffset,
}

impl AlertKind {
    /// Every kind, with the statuses it is raised with.
    pub const ALL: [(AlertKind, &'static [AlertStatus]); 6] = [
        (AlertKind::MemberDown, &[AlertStatus::Firing]),
        (AlertKind::MemberRecovered, &[AlertStatus::Firing]),
        (
            AlertKind::OutOfSync,
            &[AlertStatus::Firing, AlertStatus::Resolved],
        ),
        (
            AlertKind::PolicyDrift,
            &[AlertStatus::Firing, AlertStatus::Resolved],
        ),
        (AlertKind::PinLockout, &[AlertStatus::Firing]),
        (
            AlertKind::ClockOffset,
            &[AlertStatus::Firing, AlertStatus::Resolved],
        ),
    ];

    pub fn name(self) -> &'static str {
        match self {
            AlertKind::MemberDown => "member-down",
            AlertKind::MemberRecovered => "member-recovered",
            AlertKind::OutOfSync => "out-of-sync",
            AlertKind::PolicyDrift => "policy-drift",
            AlertKind::PinLockout => "pin-lockout",
            AlertKind::ClockOffset => "clock-offset",
        }
    }
}

/// `firing` when a condition starts; `resolved` when a lasting condition
/// (out of sync, policy drift) ends. Member down and recovered are two
/// events, each firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn name(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// One alert, as commands and webhooks receive it (JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub status: AlertStatus,
    /// The serial of the member that raised it.
    pub reporter: u64,
    pub group: Option<String>,
    /// The member the alert is about (member down or recovered).
    pub member: Option<u64>,
    pub partition: Option<String>,
    /// One line for a human.
    pub summary: String,
    pub time_ms: u64,
}

impl Alert {
    pub fn new(kind: AlertKind, status: AlertStatus, summary: impl Into<String>) -> Alert {
        Alert {
            kind,
            status,
            reporter: 0,
            group: None,
            member: None,
            partition: None,
            summary: summary.into(),
            time_ms: crate::now_ms(),
        }
    }

    pub fn group(mut self, group: &str) -> Alert {
        self.group = Some(group.to_string());
        self
    }

    pub fn member(mut self, serial: u64) -> Alert {
        self.member = Some(serial);
        self
    }

    pub fn partition(mut self, partition: &str) -> Alert {
        self.partition = Some(partition.to_string());
        self
    }

    fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The `HAHSM_ALERT_*` variables an alert command gets.
    fn env(&self) -> Vec<(&'static str, String)> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        vec![
            ("HAHSM_ALERT_KIND", self.kind.name().to_string()),
            ("HAHSM_ALERT_STATUS", self.status.name().to_string()),
            ("HAHSM_ALERT_REPORTER", self.reporter.to_string()),
            ("HAHSM_ALERT_GROUP", opt(&self.group)),
            (
                "HAHSM_ALERT_MEMBER",
                self.member.map(|m| m.to_string()).unwrap_or_default(),
            ),
            ("HAHSM_ALERT_PARTITION", opt(&self.partition)),
            ("HAHSM_ALERT_SUMMARY", self.summary.clone()),
            ("HAHSM_ALERT_TIME_MS", self.time_ms.to_string()),
        ]
    }
}

/// The alert queue of one member.
pub struct Alerts {
    tx: mpsc::Sender<Alert>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Alert>>>,
    reporter: u64,
    /// Where alerts go; replaced when the config is reloaded (SIGHUP), for
    /// the alerts delivered from then on.
    targets: std::sync::RwLock<Arc<AlertTargets>>,
    /// What this member tells Alertmanager, and the sender's wake-up.
    am: std::sync::Mutex<AmState>,
    am_changed: tokio::sync::Notify,
    /// The member's metrics URL, as the alerts' `generatorURL`.
    generator_url: OnceLock<String>,
}

impl Alerts {
    pub fn new(reporter: u64) -> Alerts {
        let (tx, rx) = mpsc::channel(QUEUE);
        Alerts {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            targets: std::sync::RwLock::default(),
            reporter,
            am: std::sync::Mutex::default(),
            am_changed: tokio::sync::Notify::new(),
            generator_url: OnceLock::new(),
        }
    }

    /// The URL Alertmanager shows as the alerts' source (the metrics
    /// endpoint's), once it is bound.
    pub fn set_generator_url(&self, url: String) {
        let _ = self.generator_url.set(url);
    }

    /// Queues an alert; never waits. A full queue drops it, counted in
    /// `hahsm_alerts_dropped_total`.
    pub fn raise(&self, metrics: &Metrics, mut alert: Alert) {
        alert.reporter = self.reporter;
        metrics.alert_raised(alert.kind.name(), alert.status.name());
        warn!(
            kind = alert.kind.name(),
            status = alert.status.name(),
            group = alert.group.as_deref().unwrap_or(""),
            member = alert.member.unwrap_or(0),
            "alert: {}",
            alert.summary
        );
        if self.tx.try_send(alert).is_err() {
            metrics.alert_dropped();
            warn!("alert queue full: an alert was dropped");
        }
    }

    /// Sets where alerts go from now on. A new Alertmanager is sent the
    /// alerts that fire at once.
    pub fn set_targets(&self, targets: AlertTargets) {
        *self.targets.write_or_recover() = Arc::new(targets);
        self.am_changed.notify_one();
    }

    /// The dispatcher: delivers every queued alert to every target. Runs
    /// once, for the life of the daemon.
    pub async fn dispatch(&self, data_dir: PathBuf, metrics: Arc<Metrics>) {
        let Some(rx) = self.rx.lock_or_recover().take() else {
            return;
        };
        futures::join!(
            self.deliver_each(rx, data_dir, metrics.clone()),
            self.send_to_alertmanager(&metrics)
        );
    }

    async fn deliver_each(&self, mut rx: mpsc::Receiver<Alert>, data_dir: PathBuf, metrics: Arc<Metrics>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_DELIVERIES));
        while let Some(alert) = rx.recv().await {
            let line = alert.json();
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(data_dir.join("alerts.jsonl"))
            {
                let _ = writeln!(f, "{line}");
            }
            // Kept whether or not an Alertmanager is configured now, so that
            // one configured later (SIGHUP) hears what fires.
            self.am.lock_or_recover().apply(&alert);
            self.am_changed.notify_one();
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (targets, metrics) = (self.targets.read_or_recover().clone(), metrics.clone());
            tokio::spawn(async move {
                deliver(&targets, &alert, &metrics).await;
                drop(slot);
            });
        }
    }
}

impl Alerts {
    /// The Alertmanager sender: POSTs the whole state (`AmState::pending`)
    /// when it changes and every `alertmanager_resend_secs`, one request at a
    /// time, each within `timeout_ms`. A failure is logged and counted, and
    /// the state is sent again after a doubling back-off (at most
    /// `MAX_BACKOFF`); changes meanwhile wait for that attempt.
    async fn send_to_alertmanager(&self, metrics: &Metrics) {
        let mut last_sent = Instant::now();
        // While failing: when to try again, and the back-off after that.
        let mut failing: Option<(Instant, Duration)> = None;
        loop {
            let targets = self.targets.read_or_recover().clone();
            let resend = Duration::from_secs(targets.alertmanager_resend_secs.max(1));
            let at = failing.map_or(last_sent + resend, |(retry_at, _)| retry_at);
            let changed = tokio::select! {
                _ = self.am_changed.notified() => true,
                _ = tokio::time::sleep_until(at.into()) => false,
            };
            if changed && failing.is_some_and(|(retry_at, _)| Instant::now() < retry_at) {
                continue;
            }
            // The targets may have changed while this task waited.
            let targets = self.targets.read_or_recover().clone();
            let Some(url) = &targets.alertmanager else {
                failing = None;
                last_sent = Instant::now();
                continue;
            };
            let (body, sent) = {
                let am = self.am.lock_or_recover();
                let pending = am.pending();
                let generator = self.generator_url.get().map(String::as_str);
                let body = am_payload(&pending, crate::now_ms(), generator);
                (
                    body,
                    pending
                        .iter()
                        .map(|e| (e.0.clone(), e.1.stamp))
                        .collect::<Vec<_>>(),
                )
            };
            if sent.is_empty() {
                failing = None;
                last_sent = Instant::now();
                continue;
            }
            let timeout = Duration::from_millis(targets.timeout_ms);
            let result = match WebhookUrl::alertmanager(url) {
                Ok(url) => post_json(&url, body, timeout, "the Alertmanager").await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    if failing.is_some() {
                        info!(target = "alertmanager", "alerts delivered after retrying");
                    }
                    self.am.lock_or_recover().delivered(&sent);
                    failing = None;
                    last_sent = Instant::now();
                }
                Err(e) => {
                    metrics.alert_delivery_failed("alertmanager");
                    let backoff =
                        failing.map_or(Duration::from_millis(targets.retry_backoff_ms.max(1)), |(_, b)| b);
                    warn!(
                        target = "alertmanager",
                        alerts = sent.len(),
                        retry_in_ms = backoff.as_millis() as u64,
                        error = %e,
                        "alert delivery failed"
                    );
                    failing = Some((Instant::now() + backoff, (backoff * 2).min(MAX_BACKOFF)));
                }
            }
        }
    }
}

/// What Alertmanager knows an alert by: its labels. Two members that see
/// the same member down send the same labels, so Alertmanager keeps one
/// alert for it, whichever members report it.
type AmLabels = BTreeMap<&'static str, String>;

/// One alert as this member states it to Alertmanager.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AmEntry {
    summary: String,
    description: String,
    starts_ms: u64,
    /// Set once it ended: then sent (with `endsAt`) until delivered, and
    /// forgotten.
    ends_ms: Option<u64>,
    /// An event with no end of its own (a PIN lockout): sent once, without
    /// `endsAt`, and forgotten; Alertmanager expires it after its
    /// `resolve_timeout`.
    once: bool,
    /// Changes with every change of the entry, so that a delivery forgets
    /// only what it delivered.
    stamp: u64,
}

/// What an alert does to Alertmanager's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AmRole {
    Fire,
    Resolve,
    Once,
}

/// The alerts this member states to Alertmanager, without I/O.
#[derive(Debug, Default)]
struct AmState {
    entries: BTreeMap<AmLabels, AmEntry>,
    stamps: u64,
}

impl AmState {
    /// Takes in a raised alert. Member recovered ends the member-down alert
    /// of the same group and member; out of sync and policy drift end with
    /// their resolved alert.
    fn apply(&mut self, alert: &Alert) {
        let (labels, role) = am_labels(alert);
        self.stamps += 1;
        let stamp = self.stamps;
        let (summary, description) = (alert.summary.clone(), am_description(alert));
        match role {
            AmRole::Fire => {
                let starts_ms = match self.entries.get(&labels) {
                    Some(e) if e.ends_ms.is_none() && !e.once => e.starts_ms,
                    _ => alert.time_ms,
                };
                self.entries.insert(
                    labels,
                    AmEntry {
                        summary,
                        description,
                        starts_ms,
                        ends_ms: None,
                        once: false,
                        stamp,
                    },
                );
            }
            AmRole::Resolve => {
                // It ended: say so with what it fired as, or, when this member
                // never saw it fire (it restarted meanwhile), with the end.
                let entry = match self.entries.remove(&labels) {
                    Some(e) if e.ends_ms.is_none() && !e.once => AmEntry {
                        ends_ms: Some(alert.time_ms.max(e.starts_ms)),
                        description: format!("{} Resolved: {}", e.description, alert.summary),
                        stamp,
                        ..e
                    },
                    _ => AmEntry {
                        summary,
                        description,
                        starts_ms: alert.time_ms,
                        ends_ms: Some(alert.time_ms),
                        once: false,
                        stamp,
                    },
                };
                self.entries.insert(labels, entry);
            }
            AmRole::Once => {
                self.entries.insert(
                    labels,
                    AmEntry {
                        summary,
                        description,
                        starts_ms: alert.time_ms,
                        ends_ms: None,
                        once: true,
                        stamp,
                    },
                );
            }
        }
    }

    /// Everything to send now: the firing alerts, and the ended and one-off
    /// ones not yet delivered.
    fn pending(&self) -> Vec<(AmLabels, AmEntry)> {
        self.entries.iter().map(|(l, e)| (l.clone(), e.clone())).collect()
    }

    /// After a delivery of what `pending` gave: forgets the ended and one-off
    /// alerts it carried, unless they changed since.
    fn delivered(&mut self, sent: &[(AmLabels, u64)]) {
        for (labels, stamp) in sent {
            if self
                .entries
                .get(labels)
                .is_some_and(|e| e.stamp == *stamp && (e.ends_ms.is_some() || e.once))
            {
                self.entries.remove(labels);
            }
        }
    }
}

/// The labels of an alert for Alertmanager, and what it does there.
/// `alertname` is the shipped Prometheus rule's where the two mean the same
/// (`HahsmMemberDown`, `HahsmPolicyDrift`, `HahsmPinLocked`); `source` tells
/// them apart (`hahsmd` here), and so do the labels: the member's alerts
/// carry no `name`, `instance` or `job`.
fn am_labels(alert: &Alert) -> (AmLabels, AmRole) {
    let (alertname, severity, role) = match (alert.kind, alert.status) {
        (AlertKind::MemberDown, _) => ("HahsmMemberDown", "critical", AmRole::Fire),
        (AlertKind::MemberRecovered, _) => ("HahsmMemberDown", "critical", AmRole::Resolve),
        (AlertKind::OutOfSync, s) => ("HahsmOutOfSync", "warning", am_role(s)),
        (AlertKind::PolicyDrift, s) => ("HahsmPolicyDrift", "warning", am_role(s)),
        (AlertKind::PinLockout, AlertStatus::Firing) => ("HahsmPinLocked", "critical", AmRole::Once),
        (AlertKind::PinLockout, AlertStatus::Resolved) => ("HahsmPinLocked", "critical", AmRole::Resolve),
        (AlertKind::ClockOffset, s) => ("HahsmClockOffset", "critical", am_role(s)),
    };
    let mut labels = AmLabels::new();
    labels.insert("alertname", alertname.to_string());
    labels.insert("severity", severity.to_string());
    labels.insert("source", "hahsmd".to_string());
    if let Some(g) = &alert.group {
        labels.insert("group", g.clone());
    }
    if let Some(m) = alert.member {
        labels.insert("member", m.to_string());
    }
    if let Some(p) = &alert.partition {
        labels.insert("partition", p.clone());
    }
    (labels, role)
}

fn am_role(status: AlertStatus) -> AmRole {
    match status {
        AlertStatus::Firing => AmRole::Fire,
        AlertStatus::Resolved => AmRole::Resolve,
    }
}

/// The alert's description for a human: what it means, what to do, and
/// which member says so.
fn am_description(alert: &Alert) -> String {
    let group = alert.group.as_deref().unwrap_or("-");
    let what = match alert.kind {
        AlertKind::MemberDown | AlertKind::MemberRecovered => format!(
            "Member {} of HA group {group} does not answer its peers. Clients fail over to the \
             other members, and it catches up by itself when it returns. Check the host and its \
             hahsmd, and the peer links (`hahsm ha show` on a survivor).",
            alert.member.unwrap_or(0)
        ),
        AlertKind::OutOfSync => format!(
            "HA group {group} is out of sync. Run `hahsm ha show --sync-status` on each member \
             and compare."
        ),
        AlertKind::PolicyDrift => format!(
            "Policies differ between the members of HA group {group}. `hahsm ha show` lists \
             each difference; `hahsm ha sync-policies` gives one member's policies to the others."
        ),
        AlertKind::ClockOffset => format!(
            "A clock in HA group {group} is further off than the maximum offset: the member whose \
             clock is off takes no writes and its peers take none from it. Fix its time \
             synchronisation (NTP); `hahsm ha show` shows each member's offset."
        ),
        AlertKind::PinLockout => format!(
            "Partition {} refuses every login after too many wrong PINs. Find the application \
             that sent them, then have the partition owner set a new PIN.",
            alert.partition.as_deref().unwrap_or("-")
        ),
    };
    format!("{what} Reported by member {}.", alert.reporter)
}

/// The body of a POST to `/api/v2/alerts`: the alerts as Alertmanager's
/// API takes them (`labels`, `annotations`, `startsAt`, `endsAt` once
/// ended, `generatorURL`).
fn am_payload(pending: &[(AmLabels, AmEntry)], now_ms: u64, generator: Option<&str>) -> String {
    let at = |ms: u64| hahsm_proto::utc::rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms));
    let alerts: Vec<serde_json::Value> = pending
        .iter()
        .map(|(labels, e)| {
            let mut a = serde_json::json!({
                "labels": labels,
                "annotations": {"summary": e.summary, "description": e.description},
                // A clock that went back must not start an alert in the future.
                "startsAt": at(e.starts_ms.min(now_ms)),
            });
            if let Some(end) = e.ends_ms {
                a["endsAt"] = at(end.min(now_ms).max(e.starts_ms.min(now_ms))).into();
            }
            if let Some(g) = generator {
                a["generatorURL"] = g.into();
            }
            a
        })
        .collect();
    serde_json::Value::Array(alerts).to_string()
}

/// Delivers one alert to each configured target, each with its retries.
async fn deliver(targets: &AlertTargets, alert: &Alert, metrics: &Metrics) {
    let exec = async {
        if !targets.exec.is_empty() {
            with_retries(targets, "exec", metrics, || run_command(targets, alert)).await;
        }
    };
    let webhook = async {
        if let Some(url) = &targets.webhook {
            with_retries(targets, "webhook", metrics, || post(targets, url, alert)).await;
        }
    };
    futures::join!(exec, webhook);
}

async fn with_retries<F, Fut>(targets: &AlertTargets, target: &str, metrics: &Metrics, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut backoff = Duration::from_millis(targets.retry_backoff_ms.max(1));
    for n in 0..=targets.retries {
        match attempt().await {
            Ok(()) => {
                if n > 0 {
                    info!(target, attempt = n + 1, "alert delivered after retrying");
                }
                return;
            }
            Err(e) => {
                metrics.alert_delivery_failed(target);
                warn!(target, attempt = n + 1, error = %e, "alert delivery failed");
            }
        }
        if n < targets.retries {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    warn!(target, "alert not delivered: retries exhausted");
}

/// Runs the alert command: no shell, a clean environment (PATH only, plus
/// the alert's variables), the alert as JSON on stdin, killed at the timeout.
async fn run_command(targets: &AlertTargets, alert: &Alert) -> Result<(), String> {
    let (program, args) = targets.exec.split_first().ok_or("no command")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .envs(alert.env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let timeout = Duration::from_millis(targets.timeout_ms);
    let run = async {
        let mut child = cmd.spawn().map_err(|e| format!("cannot run {program}: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that ignores its stdin may close it: not an error.
            let _ = stdin.write_all(alert.json().as_bytes()).await;
            let _ = stdin.write_all(b"\n").await;
        }
        let status = child.wait().await.map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{program} exited with {status}"))
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("{program} did not finish within {timeout:?}"))?
}

/// POSTs the alert as JSON to the webhook.
async fn post(targets: &AlertTargets, url: &str, alert: &Alert) -> Result<(), String> {
    let url = WebhookUrl::parse(url)?;
    let timeout = Duration::from_millis(targets.timeout_ms);
    post_json(&url, alert.json(), timeout, "the webhook").await
}

/// POSTs a JSON body, within `timeout` for the whole exchange; any 2xx
/// answer is a delivery. `who` names the receiver in errors.
async fn post_json(url: &WebhookUrl, body: String, timeout: Duration, who: &str) -> Result<(), String> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(&url.authority)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", url.authority))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::post(url.path.as_str())
            .header(hyper::header::HOST, url.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "hahsmd")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string());
        let result = match response {
            Ok(r) if r.status().is_success() => {
                // Read the (small) answer so the connection closes cleanly.
                let _ = r.into_body().collect().await;
                Ok(())
            }
            Ok(r) => {
                // Its reason, in a few words (Alertmanager says what it refused).
                let status = r.status();
                let text = match r.into_body().collect().await {
                    Ok(b) => String::from_utf8_lossy(&b.to_bytes()).chars().take(200).collect(),
                    Err(_) => String::new(),
                };
                Err(format!("{who} answered {status}: {}", text.trim()))
            }
            Err(e) => Err(e),
        };
        driver.abort();
        result
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("{who} did not answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls() {
        assert_eq!(
            WebhookUrl::parse("http://127.0.0.1:9000/hooks/hsm").unwrap(),
            WebhookUrl {
                authority: "127.0.0.1:9000".into(),
                path: "/hooks/hsm".into()
            }
        );
        assert_eq!(
            WebhookUrl::parse("http://alerts.example").unwrap().authority,
            "alerts.example:80"
        );
        assert!(WebhookUrl::parse("https://x/").is_err());
        assert!(WebhookUrl::parse("http://user:pw@x/").is_err());
        assert!(WebhookUrl::parse("http:///path").is_err());
    }

    #[test]
    fn an_alert_carries_its_facts_in_json_and_in_variables() {
        let mut a = Alert::new(AlertKind::MemberDown, AlertStatus::Firing, "member 7 is down")
            .group("g")
            .member(7);
        a.reporter = 3;
        let v: serde_json::Value = serde_json::from_str(&a.json()).unwrap();
        assert_eq!(v["kind"], "member-down");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["member"], 7);
        assert_eq!(v["reporter"], 3);
        let env: std::collections::HashMap<_, _> = a.env().into_iter().collect();
        assert_eq!(env["HAHSM_ALERT_KIND"], "member-down");
        assert_eq!(env["HAHSM_ALERT_MEMBER"], "7");
        assert_eq!(env["HAHSM_ALERT_GROUP"], "g");
    }

    fn alert(kind: AlertKind, status: AlertStatus, time_ms: u64) -> Alert {
        let mut a = Alert::new(kind, status, format!("{} {}", kind.name(), status.name())).group("g");
        a.time_ms = time_ms;
        a.reporter = 3;
        a
    }

    fn payload(am: &AmState, now_ms: u64) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&am_payload(
            &am.pending(),
            now_ms,
            Some("http://127.0.0.1:9792/metrics"),
        ))
        .unwrap();
        v.as_array().unwrap().clone()
    }

    fn sent(am: &AmState) -> Vec<(AmLabels, u64)> {
        am.pending().into_iter().map(|(l, e)| (l, e.stamp)).collect()
    }

    #[test]
    fn alertmanager_is_told_a_member_down_until_it_recovers_then_its_end_once() {
        let mut am = AmState::default();
        am.apply(&alert(AlertKind::MemberDown, AlertStatus::Firing, 1_000).member(7));
        let p = payload(&am, 2_000);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            p[0]["labels"],
            serde_json::json!({"alertname": "HahsmMemberDown", "severity": "critical",
                "source": "hahsmd", "group": "g", "member": "7"})
        );
        assert_eq!(p[0]["startsAt"], "1970-01-01T00:00:01.000Z");
        assert!(p[0].get("endsAt").is_none(), "{p:?}");
        assert_eq!(p[0]["generatorURL"], "http://127.0.0.1:9792/metrics");
        assert_eq!(p[0]["annotations"]["summary"], "member-down firing");
        assert!(
            p[0]["annotations"]["description"]
                .as_str()
                .unwrap()
                .ends_with("Reported by member 3."),
            "{p:?}"
        );
        // Delivered, it stays: it is sent again until it ends.
        am.delivered(&sent(&am));
        assert_eq!(payload(&am, 3_000).len(), 1);
        // Raised again (another detector round), it keeps its start.
        am.apply(&alert(AlertKind::MemberDown, AlertStatus::Firing, 5_000).member(7));
        assert_eq!(payload(&am, 6_000)[0]["startsAt"], "1970-01-01T00:00:01.000Z");
        // Recovered: the same alert, with its end, until delivered.
        am.apply(&alert(AlertKind::MemberRecovered, AlertStatus::Firing, 9_000).member(7));
        let p = payload(&am, 10_000);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0]["labels"]["alertname"], "HahsmMemberDown");
        assert_eq!(p[0]["labels"]["member"], "7");
        assert_eq!(p[0]["startsAt"], "1970-01-01T00:00:01.000Z");
        assert_eq!(p[0]["endsAt"], "1970-01-01T00:00:09.000Z");
        assert_eq!(p[0]["annotations"]["summary"], "member-down firing");
        let unsent = sent(&am);
        am.delivered(&unsent);
        assert!(am.pending().is_empty(), "{:?}", am.pending());
    }

    #[test]
    fn a_delivery_forgets_only_what_it_carried() {
        let mut am = AmState::default();
        am.apply(&alert(AlertKind::OutOfSync, AlertStatus::Firing, 1_000).partition("p"));
        am.apply(&alert(AlertKind::OutOfSync, AlertStatus::Resolved, 2_000).partition("p"));
        let carried = sent(&am);
        // It fires again while that POST is on its way: the new firing stays.
        am.apply(&alert(AlertKind::OutOfSync, AlertStatus::Firing, 3_000).partition("p"));
        am.delivered(&carried);
        let p = payload(&am, 4_000);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0]["labels"]["alertname"], "HahsmOutOfSync");
        assert_eq!(p[0]["labels"]["partition"], "p");
        assert_eq!(p[0]["startsAt"], "1970-01-01T00:00:03.000Z");
        assert!(p[0].get("endsAt").is_none(), "{p:?}");
    }

    #[test]
    fn an_end_this_member_never_saw_start_and_a_one_off_event_are_sent_until_delivered() {
        let mut am = AmState::default();
        // Back from a restart, it hears a member recover: Alertmanager may
        // still hold the alert another member (or its former self) raised.
        am.apply(&alert(AlertKind::MemberRecovered, AlertStatus::Firing, 5_000).member(9));
        am.apply(&alert(AlertKind::PinLockout, AlertStatus::Firing, 6_000).partition("p"));
        let p = payload(&am, 7_000);
        assert_eq!(p.len(), 2, "{p:?}");
        let down = p
            .iter()
            .find(|a| a["labels"]["alertname"] == "HahsmMemberDown")
            .unwrap();
        assert_eq!(down["endsAt"], "1970-01-01T00:00:05.000Z");
        let lock = p
            .iter()
            .find(|a| a["labels"]["alertname"] == "HahsmPinLocked")
            .unwrap();
        assert!(lock.get("endsAt").is_none(), "{lock}");
        assert_eq!(lock["labels"]["partition"], "p");
        assert!(lock["labels"].get("member").is_none(), "{lock}");
        // A failed POST forgets nothing; a delivered one forgets both.
        assert_eq!(payload(&am, 8_000).len(), 2);
        am.delivered(&sent(&am));
        assert!(am.pending().is_empty());
    }

    #[test]
    fn alertmanager_times_never_lie_ahead_of_the_clock() {
        let mut am = AmState::default();
        am.apply(&alert(AlertKind::PolicyDrift, AlertStatus::Firing, 9_000));
        am.apply(&alert(AlertKind::PolicyDrift, AlertStatus::Resolved, 9_500));
        // The clock went back to 8 s: neither start nor end is in the future.
        let p = payload(&am, 8_000);
        assert_eq!(p[0]["startsAt"], "1970-01-01T00:00:08.000Z");
        assert_eq!(p[0]["endsAt"], "1970-01-01T00:00:08.000Z");
    }

    #[test]
    fn alertmanager_urls_name_its_v2_api() {
        let u = WebhookUrl::alertmanager("http://127.0.0.1:9093").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("127.0.0.1:9093", "/api/v2/alerts")
        );
        let u = WebhookUrl::alertmanager("http://am.example/prefix/").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("am.example:80", "/prefix/api/v2/alerts")
        );
        assert!(WebhookUrl::alertmanager("https://am.example").is_err());
        assert!(WebhookUrl::alertmanager("http://am.example/?x=1").is_err());
        // A URL with credentials is refused without repeating them.
        let e = WebhookUrl::alertmanager("http://user:hunter2@am.example").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let e = WebhookUrl::parse("https://user:hunter2@x/").unwrap_err();
        assert!(!e.contains("hunter2") && e.contains("only http://"), "{e}");
    }
}

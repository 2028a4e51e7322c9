//! Alerts: member down, member recovered, out of sync, policy drift, PIN
//! lockout. Raised by the member itself, so they fire with no application
//! and no operator connected (report §5.2.3).
//!
//! Raising an alert never blocks: it goes into a bounded queue, and a
//! dispatcher task delivers each alert, in a task of its own, to the
//! configured command and webhook, retrying with doubling back-off. Every
//! alert is also appended to `<data_dir>/alerts.jsonl` and logged.
//!
//! An alert carries names, serials and counts only: never a PIN, a secret or
//! key material (its fields are all plain, non-secret values).
use crate::config::{AlertTargets, WebhookUrl};
use crate::metrics::Metrics;
use crate::sync::{Recover, RecoverRw};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
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
}

impl AlertKind {
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::MemberDown => "member-down",
            AlertKind::MemberRecovered => "member-recovered",
            AlertKind::OutOfSync => "out-of-sync",
            AlertKind::PolicyDrift => "policy-drift",
            AlertKind::PinLockout => "pin-lockout",
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
}

impl Alerts {
    pub fn new(reporter: u64) -> Alerts {
        let (tx, rx) = mpsc::channel(QUEUE);
        Alerts {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            targets: std::sync::RwLock::default(),
            reporter,
        }
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

    /// The dispatcher: delivers every queued alert to every target. Runs
    /// once, for the life of the daemon.
    /// Sets where alerts go from now on.
    pub fn set_targets(&self, targets: AlertTargets) {
        *self.targets.write_or_recover() = Arc::new(targets);
    }

    pub async fn dispatch(&self, data_dir: PathBuf, metrics: Arc<Metrics>) {
        let Some(mut rx) = self.rx.lock_or_recover().take() else {
            return;
        };
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

/// POSTs the alert as JSON; any 2xx answer is a delivery.
async fn post(targets: &AlertTargets, url: &str, alert: &Alert) -> Result<(), String> {
    let url = WebhookUrl::parse(url)?;
    let timeout = Duration::from_millis(targets.timeout_ms);
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
            .body(Full::new(Bytes::from(alert.json())))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string());
        let result = match response {
            Ok(r) if r.status().is_success() => {
                // Read the (small) answer so the connection closes cleanly.
                let _ = r.into_body().collect().await;
                Ok(())
            }
            Ok(r) => Err(format!("the webhook answered {}", r.status())),
            Err(e) => Err(e),
        };
        driver.abort();
        result
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("the webhook did not answer within {timeout:?}"))?
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
}

//! The member's monitoring without any application: its metrics registry
//! and its alert queue, which the failure detector, the login checks and the
//! watch loop (`watch.rs`) report to. It reads no member state itself.
use crate::alerts::{Alert, AlertKind, Alerts};
use crate::config::AlertTargets;
use crate::metrics::Metrics;
use std::sync::{Arc, OnceLock};

/// The member's metrics and alerts.
pub struct Monitor {
    pub metrics: Arc<Metrics>,
    pub alerts: Alerts,
    /// `http://addr/metrics`, once the endpoint is bound.
    metrics_url: OnceLock<String>,
}

impl Monitor {
    pub fn new(serial: u64) -> Monitor {
        let metrics = Arc::new(Metrics::new());
        // Every alert's counter exists at 0 from the start, so that the first
        // alert raised is an increase a rate() sees.
        for (kind, statuses) in AlertKind::ALL {
            for status in statuses {
                metrics.declare_alert(kind.name(), status.name());
            }
        }
        Monitor {
            metrics,
            alerts: Alerts::new(serial),
            metrics_url: OnceLock::new(),
        }
    }

    /// Sets where alerts go (at start and at each SIGHUP); each configured
    /// target's delivery-failure counter exists at 0 from then on.
    pub fn set_alert_targets(&self, targets: AlertTargets) {
        for (target, configured) in [
            ("exec", !targets.exec.is_empty()),
            ("webhook", targets.webhook.is_some()),
            ("alertmanager", targets.alertmanager.is_some()),
        ] {
            if configured {
                self.metrics.declare_delivery_target(target);
            }
        }
        self.alerts.set_targets(targets);
    }

    pub fn raise(&self, alert: Alert) {
        self.alerts.raise(&self.metrics, alert);
    }

    pub fn metrics_url(&self) -> Option<String> {
        self.metrics_url.get().cloned()
    }

    /// Records the endpoint's URL once it is bound.
    pub fn set_metrics_url(&self, url: String) {
        self.alerts.set_generator_url(url.clone());
        let _ = self.metrics_url.set(url);
    }
}

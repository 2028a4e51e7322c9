//! The member's monitoring without any application: its metrics registry
//! and its alert queue, which the failure detector, the login checks and the
//! watch loop (`watch.rs`) report to. It reads no member state itself.
use crate::alerts::{Alert, Alerts};
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

    /// Records the endpoint's URL once it is bound.
    pub fn set_metrics_url(&self, url: String) {
        self.alerts.set_generator_url(url.clone());
        let _ = self.metrics_url.set(url);
    }
}

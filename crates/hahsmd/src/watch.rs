//! The watch loop: keeps each group's copy of this member's policies
//! current (heartbeats carry it to the peers), and turns lasting conditions
//! (out of sync, policy drift, a clock off) into alerts. Member down and recovered come
//! straight from the replicator's failure detector (the HA log), so they
//! fire as soon as the member is declared down.
use crate::alerts::{Alert, AlertKind, AlertStatus};
use crate::appliance::Appliance;
use hahsm_proto::admin::MemberState;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the watch loop looks at the groups.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

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
    peer_clock: Condition,
    own_clock: Condition,
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
            // A clock off is alerted at once: writes are already refused.
            // Peers refused and this member's own clock are two conditions,
            // so that the second to begin is alerted too.
            let peers_off = g.clock_problems.len() > usize::from(g.own_clock_off);
            let conditions = [
                (&mut w.peer_clock, peers_off, "a peer's clock is off"),
                (&mut w.own_clock, g.own_clock_off, "this member's clock is off"),
            ];
            for (condition, holds, what) in conditions {
                if let Some(status) = condition.update(holds, Duration::ZERO) {
                    let summary = match status {
                        AlertStatus::Firing => {
                            format!("HA group {}: {}", g.label, g.clock_problems.join("; "))
                        }
                        AlertStatus::Resolved => format!("HA group {}: resolved: {what}", g.label),
                    };
                    app.monitor.raise(
                        Alert::new(AlertKind::ClockOffset, status, summary)
                            .group(&g.label)
                            .partition(&g.partition),
                    );
                }
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

#[cfg(test)]
mod tests {
    use super::*;

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

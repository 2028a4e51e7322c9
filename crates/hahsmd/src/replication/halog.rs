//! The member's HA event log: the report's table 5.2 lines in `ha.log` and
//! the same events as JSON lines in `ha.jsonl` (the format is
//! `hahsm_proto::halog`'s, shared with the module). A dropped or recovered
//! member also raises its alert here, the moment the failure detector decides.
use crate::alerts::{Alert, AlertKind, AlertStatus};
use hahsm_proto::halog::{HaEvent, HaRecord};
use std::io::Write as _;
use std::sync::Arc;
use tracing::warn;

pub struct HaLog {
    pub(super) dir: std::path::PathBuf,
    pub(super) monitor: Arc<crate::monitor::Monitor>,
}

impl HaLog {
    pub(super) fn event(&self, group: &str, member: u64, event: HaEvent) {
        let member_name = member.to_string();
        let record = HaRecord {
            at: std::time::SystemTime::now(),
            pid: std::process::id(),
            group,
            member: &member_name,
            event,
        };
        let line = record.text();
        warn!("{line}");
        let kind = match event {
            HaEvent::Dropped => Some(AlertKind::MemberDown),
            HaEvent::Recovered(_) => Some(AlertKind::MemberRecovered),
            _ => None,
        };
        if let Some(kind) = kind {
            let summary = line
                .split_once("HA group: ")
                .map_or(line.as_str(), |(_, rest)| rest);
            self.monitor.raise(
                Alert::new(kind, AlertStatus::Firing, format!("HA group: {summary}"))
                    .group(group)
                    .member(member),
            );
        }
        for (name, text) in [("ha.log", line), ("ha.jsonl", record.json())] {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))
            {
                let _ = writeln!(f, "{text}");
            }
        }
    }
}

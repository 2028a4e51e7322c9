//! The HA log's format, shared by the member (`ha.log` in its data
//! directory) and the PKCS#11 module (`HAHSM_HA_LOG`), so that both write the
//! report's table 5.2 lines and the same JSON lines. This module does no I/O:
//! it turns an event into text; the callers write it where they log.
use crate::utc::hh_mm_ss;
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What happened to a member of an HA group, as the log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaEvent {
    /// The member stopped answering and is no longer used.
    Dropped,
    /// Attempt `n` to reach a dropped member failed.
    RecoveryFailed(u32),
    /// Attempt `n` to reach a dropped member succeeded: it is back.
    Recovered(u32),
    /// The member joined the group.
    Added,
    /// The member left the group.
    Removed,
}

impl HaEvent {
    /// The event's name in the JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            HaEvent::Dropped => "dropped",
            HaEvent::RecoveryFailed(_) => "recovery-failed",
            HaEvent::Recovered(_) => "recovered",
            HaEvent::Added => "added",
            HaEvent::Removed => "removed",
        }
    }

    /// The recovery attempt an event counts, if it counts one.
    pub fn attempt(self) -> Option<u32> {
        match self {
            HaEvent::RecoveryFailed(n) | HaEvent::Recovered(n) => Some(n),
            _ => None,
        }
    }
}

/// One event of one group about one member, seen by process `pid` at `at`.
/// `member` is how the writer names the member: its serial on a member, its
/// serial or address in the module.
#[derive(Debug, Clone, Copy)]
pub struct HaRecord<'a> {
    pub at: SystemTime,
    pub pid: u32,
    pub group: &'a str,
    pub member: &'a str,
    pub event: HaEvent,
}

impl HaRecord<'_> {
    /// The report's line: `HH:MM:SS [pid] HA group: <group> ...`.
    pub fn text(&self) -> String {
        let HaRecord {
            pid, group, member, ..
        } = *self;
        let time = hh_mm_ss(self.at);
        let what = match self.event {
            HaEvent::Dropped => format!("has dropped member: {member}"),
            HaEvent::RecoveryFailed(n) => format!("recovery attempt #{n} failed for member: {member}"),
            HaEvent::Recovered(n) => format!("recovery attempt #{n} succeeded for member: {member}"),
            HaEvent::Added => format!("has added member: {member}"),
            HaEvent::Removed => format!("has removed member: {member}"),
        };
        format!("{time} [{pid}] HA group: {group} {what}")
    }

    /// The same event as one JSON object, for programs.
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            time_ms: u64,
            pid: u32,
            group: &'a str,
            event: &'a str,
            member: &'a str,
            attempt: Option<u32>,
        }
        serde_json::to_string(&Line {
            time_ms: since_epoch(self.at).as_millis() as u64,
            pid: self.pid,
            group: self.group,
            event: self.event.name(),
            member: self.member,
            attempt: self.event.attempt(),
        })
        .unwrap_or_default()
    }
}

fn since_epoch(at: SystemTime) -> Duration {
    at.duration_since(UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn lines_are_the_reports() {
        let r = |event| HaRecord {
            at: at(1_709_210_096),
            pid: 42,
            group: "myHAgroup",
            member: "154438865291",
            event,
        };
        assert_eq!(
            r(HaEvent::Dropped).text(),
            "12:34:56 [42] HA group: myHAgroup has dropped member: 154438865291"
        );
        assert_eq!(
            r(HaEvent::RecoveryFailed(3)).text(),
            "12:34:56 [42] HA group: myHAgroup recovery attempt #3 failed for member: 154438865291"
        );
        assert_eq!(
            r(HaEvent::Recovered(4)).text(),
            "12:34:56 [42] HA group: myHAgroup recovery attempt #4 succeeded for member: 154438865291"
        );
        assert_eq!(
            r(HaEvent::Added).text(),
            "12:34:56 [42] HA group: myHAgroup has added member: 154438865291"
        );
        assert_eq!(
            r(HaEvent::Removed).text(),
            "12:34:56 [42] HA group: myHAgroup has removed member: 154438865291"
        );
        assert_eq!(
            r(HaEvent::Recovered(4)).json(),
            r#"{"time_ms":1709210096000,"pid":42,"group":"myHAgroup","event":"recovered","member":"154438865291","attempt":4}"#
        );
        assert_eq!(
            r(HaEvent::Dropped).json(),
            r#"{"time_ms":1709210096000,"pid":42,"group":"myHAgroup","event":"dropped","member":"154438865291","attempt":null}"#
        );
    }
}

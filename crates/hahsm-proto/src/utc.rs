//! UTC times as the logs print them, from `SystemTime` (with the `time`
//! crate): the HA log's `HH:MM:SS` and the journal's RFC 3339 seconds.
use std::time::{SystemTime, UNIX_EPOCH};

fn utc(at: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(at.max(UNIX_EPOCH))
}

/// `HH:MM:SS` in UTC, as the report's HA log lines start.
pub fn hh_mm_ss(at: SystemTime) -> String {
    utc(at)
        .format(time::macros::format_description!("[hour]:[minute]:[second]"))
        .unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SSZ` in UTC (RFC 3339 to the second), as the journal
/// and the alerts stamp their entries.
pub fn rfc3339_seconds(at: SystemTime) -> String {
    utc(at)
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
        .unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC (RFC 3339 to the millisecond), as
/// Alertmanager's API takes an alert's start and end.
pub fn rfc3339_millis(at: SystemTime) -> String {
    utc(at)
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(hh_mm_ss(at(0)), "00:00:00");
        assert_eq!(hh_mm_ss(at(86_399)), "23:59:59");
        assert_eq!(rfc3339_seconds(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_seconds(at(1_359_072_000)), "2013-01-25T00:00:00Z");
        assert_eq!(rfc3339_seconds(at(1_709_210_096)), "2024-02-29T12:34:56Z");
        assert_eq!(rfc3339_millis(at(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(at(1_709_210_096) + Duration::from_millis(7)),
            "2024-02-29T12:34:56.007Z"
        );
    }
}

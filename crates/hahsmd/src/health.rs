//! Whether the member is ready to serve keys, as a load balancer or an
//! orchestrator asks it (`GET /health/ready` on the metrics listener), decided
//! without I/O from what the member knows of each activated partition. The
//! endpoint (`endpoint.rs`) gathers the facts and writes the answer; no secret
//! is in either.
use serde::Serialize;

/// One activated partition, as readiness sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionHealth {
    pub partition: String,
    /// The HA group it is in, if any.
    pub group: Option<String>,
    /// A standby of its group while an active member is up.
    pub standby: bool,
    /// Under the `quorum` write concern, a majority of the voters is not
    /// reachable from here.
    pub cut_off: bool,
    /// Peers this member has not caught up with (it refuses logins meanwhile).
    pub catching_up_with: Vec<u64>,
}

/// The member's readiness: what `GET /health/ready` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    /// Serving keys: every activated partition is caught up, and not cut off.
    Ready,
    /// Every activated partition is a standby of its group.
    Standby,
    /// Not serving: nothing activated, catching up, or cut off from the quorum.
    Unavailable,
}

/// The verdict and its one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub readiness: Readiness,
    pub reason: String,
    pub partitions: Vec<PartitionHealth>,
}

/// Decides readiness. A member is unavailable if the HSM is not initialized
/// or no partition is activated, or if any activated partition is catching
/// up or cut off from its quorum; it is a standby if every activated
/// partition is; else ready.
pub fn readiness(initialized: bool, mut partitions: Vec<PartitionHealth>) -> Verdict {
    partitions.sort_by(|a, b| a.partition.cmp(&b.partition));
    let verdict = |readiness, reason: String, partitions| Verdict {
        readiness,
        reason,
        partitions,
    };
    if !initialized {
        return verdict(
            Readiness::Unavailable,
            "the HSM is not initialized".into(),
            partitions,
        );
    }
    if partitions.is_empty() {
        return verdict(
            Readiness::Unavailable,
            "no partition is activated".into(),
            partitions,
        );
    }
    let mut why = Vec::new();
    for p in &partitions {
        let group = p.group.as_deref().unwrap_or("-");
        if p.cut_off {
            why.push(format!(
                "partition {} is cut off from the quorum of group {group}",
                p.partition
            ));
        }
        if !p.catching_up_with.is_empty() {
            why.push(format!(
                "partition {} is catching up with members {:?} of group {group}",
                p.partition, p.catching_up_with
            ));
        }
    }
    if !why.is_empty() {
        return verdict(Readiness::Unavailable, why.join("; "), partitions);
    }
    if partitions.iter().all(|p| p.standby) {
        let names: Vec<&str> = partitions.iter().map(|p| p.partition.as_str()).collect();
        return verdict(
            Readiness::Standby,
            format!("standby for partitions {}", names.join(", ")),
            partitions,
        );
    }
    let names: Vec<&str> = partitions.iter().map(|p| p.partition.as_str()).collect();
    verdict(
        Readiness::Ready,
        format!("serving partitions {}", names.join(", ")),
        partitions,
    )
}

/// The HTTP status of each readiness, by default 200, 429 and 503 (as Vault
/// answers active, standby and sealed), each overridable by a query
/// parameter (`readycode`, `standbycode`, `unavailablecode`), so that a load
/// balancer that knows only "2xx or not" can be told to use a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codes {
    pub ready: u16,
    pub standby: u16,
    pub unavailable: u16,
}

impl Default for Codes {
    fn default() -> Self {
        Codes {
            ready: 200,
            standby: 429,
            unavailable: 503,
        }
    }
}

impl Codes {
    /// The codes a query string asks for; an unknown parameter is ignored,
    /// a code outside 200-599 is an error.
    pub fn from_query(query: Option<&str>) -> Result<Codes, String> {
        let mut codes = Codes::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match key {
                "readycode" => &mut codes.ready,
                "standbycode" => &mut codes.standby,
                "unavailablecode" => &mut codes.unavailable,
                _ => continue,
            };
            *slot = value
                .parse::<u16>()
                .ok()
                .filter(|c| (200..=599).contains(c))
                .ok_or_else(|| format!("{key}={value}: a status code from 200 to 599"))?;
        }
        Ok(codes)
    }

    pub fn of(&self, r: Readiness) -> u16 {
        match r {
            Readiness::Ready => self.ready,
            Readiness::Standby => self.standby,
            Readiness::Unavailable => self.unavailable,
        }
    }
}

/// Whether the query asks for the JSON detail (`format=json`).
pub fn wants_json(query: Option<&str>) -> bool {
    query.unwrap_or("").split('&').any(|p| p == "format=json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, standby: bool, cut_off: bool, behind: &[u64]) -> PartitionHealth {
        PartitionHealth {
            partition: name.into(),
            group: Some("g".into()),
            standby,
            cut_off,
            catching_up_with: behind.to_vec(),
        }
    }

    #[test]
    fn nothing_activated_or_uninitialized_is_unavailable() {
        let v = readiness(false, vec![p("a", false, false, &[])]);
        assert_eq!(
            (v.readiness, v.reason.as_str()),
            (Readiness::Unavailable, "the HSM is not initialized")
        );
        let v = readiness(true, vec![]);
        assert_eq!(
            (v.readiness, v.reason.as_str()),
            (Readiness::Unavailable, "no partition is activated")
        );
    }

    #[test]
    fn catching_up_or_cut_off_is_unavailable_and_says_where() {
        let v = readiness(
            true,
            vec![p("b", false, true, &[]), p("a", false, false, &[7, 9])],
        );
        assert_eq!(v.readiness, Readiness::Unavailable);
        assert_eq!(
            v.reason,
            "partition a is catching up with members [7, 9] of group g; \
             partition b is cut off from the quorum of group g"
        );
        // A standby that is catching up is unavailable, not standby.
        let v = readiness(true, vec![p("a", true, false, &[7])]);
        assert_eq!(v.readiness, Readiness::Unavailable);
    }

    #[test]
    fn standby_only_when_every_partition_is() {
        let v = readiness(true, vec![p("a", true, false, &[]), p("b", true, false, &[])]);
        assert_eq!(
            (v.readiness, v.reason.as_str()),
            (Readiness::Standby, "standby for partitions a, b")
        );
        let v = readiness(true, vec![p("a", true, false, &[]), p("b", false, false, &[])]);
        assert_eq!(
            (v.readiness, v.reason.as_str()),
            (Readiness::Ready, "serving partitions a, b")
        );
    }

    #[test]
    fn codes_default_to_vaults_and_follow_the_query() {
        let d = Codes::from_query(None).unwrap();
        assert_eq!(
            (
                d.of(Readiness::Ready),
                d.of(Readiness::Standby),
                d.of(Readiness::Unavailable)
            ),
            (200, 429, 503)
        );
        let c = Codes::from_query(Some("standbycode=200&x=1&unavailablecode=500")).unwrap();
        assert_eq!((c.ready, c.standby, c.unavailable), (200, 200, 500));
        assert!(Codes::from_query(Some("readycode=99")).is_err());
        assert!(Codes::from_query(Some("standbycode=abc")).is_err());
        assert!(wants_json(Some("standbycode=200&format=json")));
        assert!(!wants_json(Some("format=text")));
    }
}

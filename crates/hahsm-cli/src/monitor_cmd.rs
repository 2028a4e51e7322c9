//! `hahsm monitor`: the group, live in the terminal, as the member on whose
//! console it runs sees it; `hahsm ha show` prints the same view once.
//! Every fact comes from the member (its heartbeats with the other members),
//! so the view needs no application and no connection to the other members.
use crate::common::admin_socket;
use clap::Args;
use hahsm_client::admin::AdminClient;
use hahsm_proto::admin::{AdminRequest as R, AdminResponse, GroupStatus, MemberState, MemberStatus};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
pub struct MonitorArgs {
    /// The member's admin socket [env: HAHSM_ADMIN_SOCKET; default: <data-dir>/admin.sock]
    #[arg(long, env = "HAHSM_ADMIN_SOCKET")]
    socket: Option<PathBuf>,
    /// The member's data directory, to find its admin socket.
    #[arg(long, env = "HAHSM_DATA_DIR", default_value = "/var/lib/hahsm")]
    data_dir: PathBuf,
    /// Only this group (label or serial); all of the member's groups by default.
    #[arg(long)]
    group: Option<String>,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Show the view once and exit (for scripts).
    #[arg(long, conflicts_with = "count")]
    once: bool,
    /// Show the view this many times, then exit.
    #[arg(long)]
    count: Option<u64>,
}

pub async fn run(args: MonitorArgs) -> anyhow::Result<()> {
    if !(args.interval.is_finite() && args.interval >= 0.1) {
        anyhow::bail!("--interval takes at least 0.1 (seconds)");
    }
    let socket = admin_socket(args.socket.clone(), &args.data_dir);
    let frames = if args.once { Some(1) } else { args.count };
    let redraw = std::io::stdout().is_terminal();
    let mut shown = 0u64;
    loop {
        let view = match snapshot(&socket, args.group.clone()).await {
            Ok((me, groups)) => render_screen(&me, &groups),
            // One frame for a script: the error is the answer. Live, a
            // member that restarts must not end the monitor.
            Err(e) if frames == Some(1) => return Err(e),
            Err(e) => format!("hahsm monitor: {}\n", crate::common::error_chain(&e)),
        };
        let mut out = std::io::stdout().lock();
        if redraw {
            // Home, then clear the screen: a plain ANSI redraw.
            write!(out, "\x1b[H\x1b[2J")?;
        } else if shown > 0 {
            writeln!(out, "---")?;
        }
        write!(out, "{view}")?;
        out.flush()?;
        shown += 1;
        if frames.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs_f64(args.interval)).await;
    }
}

async fn snapshot(socket: &Path, group: Option<String>) -> anyhow::Result<(MemberStatus, Vec<GroupStatus>)> {
    let mut admin = AdminClient::connect(socket).await?;
    let me = match admin.call(R::Status).await? {
        AdminResponse::Status(s) => s,
        other => anyhow::bail!("unexpected answer {other:?}"),
    };
    let groups = match admin.call(R::HaShow { group }).await? {
        AdminResponse::Groups(g) => g,
        other => anyhow::bail!("unexpected answer {other:?}"),
    };
    Ok((me, groups))
}

fn render_screen(me: &MemberStatus, groups: &[GroupStatus]) -> String {
    let mut s = format!(
        "hahsm monitor: member {} ({}), metrics {}, at {} UTC\n\n",
        me.serial,
        me.hsm_label,
        me.metrics.as_deref().unwrap_or("off"),
        hahsm_proto::utc::hh_mm_ss(std::time::SystemTime::now()),
    );
    for g in groups {
        s.push_str(&render_group(g, false));
        s.push('\n');
    }
    s
}

/// One group: each member's state, objects, lag and metrics URL; whether
/// the group is in sync or degraded, what is missing where; and whether the
/// members' policies differ. `digests` adds each member's content digest.
pub fn render_group(g: &GroupStatus, digests: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "HA group '{}'  serial {}  partition {}  write concern {}",
        g.label, g.serial, g.partition, g.write_concern
    );
    let _ = write!(
        s,
        "{:<16} {:>10} {:<8} {:>8} {:>8} {:>8} {:>10}",
        "member", "serial", "state", "objects", "lag ops", "lag s", "last seen"
    );
    if digests {
        let _ = write!(s, "  {:<16}", "digest");
    }
    let _ = writeln!(s, "  metrics");
    for m in &g.members {
        let last_seen = match m.last_seen_ms {
            Some(0) => "-".to_string(),
            Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
            None => "never".to_string(),
        };
        let _ = write!(
            s,
            "{:<16} {:>10} {:<8} {:>8} {:>8} {:>8.1} {:>10}",
            m.name,
            m.serial,
            m.state,
            m.object_count,
            m.lag_operations,
            m.lag_ms as f64 / 1000.0,
            last_seen
        );
        if digests {
            let _ = write!(s, "  {:<16}", &m.digest[..m.digest.len().min(16)]);
        }
        let metrics = if m.metrics.is_empty() {
            "-"
        } else {
            m.metrics.as_str()
        };
        let _ = writeln!(s, "  {metrics}");
    }
    let _ = writeln!(
        s,
        "in sync: {}   degraded: {}",
        if g.in_sync { "yes" } else { "NO" },
        if g.degraded { "YES" } else { "no" }
    );
    if !g.in_sync {
        for line in differences(g) {
            let _ = writeln!(s, "  {line}");
        }
    }
    if g.policy_drift.is_empty() {
        let _ = writeln!(s, "policies: the same on every member");
    } else {
        let _ = writeln!(
            s,
            "POLICY DRIFT: {} policy value(s) differ between members",
            g.policy_drift.len()
        );
        for line in &g.policy_drift {
            let _ = writeln!(s, "  {line}");
        }
        let _ = writeln!(
            s,
            "  fix with: hahsm ha sync-policies --group {} --from <member>",
            g.label
        );
    }
    let offsets: Vec<String> = g
        .members
        .iter()
        .filter_map(|m| m.clock_offset_ms.map(|ms| format!("{} {ms:+} ms", m.name)))
        .collect();
    if g.clock_problems.is_empty() {
        let _ = writeln!(
            s,
            "clocks: within the maximum offset{}",
            if offsets.is_empty() {
                String::new()
            } else {
                format!(" (peer minus this member: {})", offsets.join(", "))
            }
        );
    } else {
        let _ = writeln!(s, "CLOCK OFFSET:");
        for line in &g.clock_problems {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

/// What each member lacks compared with the most advanced member, per origin:
/// the operations it has not applied yet, and whether its content differs.
fn differences(g: &GroupStatus) -> Vec<String> {
    let mut best: std::collections::BTreeMap<u64, u64> = Default::default();
    for m in &g.members {
        for (origin, seq) in &m.version_vector {
            let e = best.entry(*origin).or_default();
            *e = (*e).max(*seq);
        }
    }
    let mut out = Vec::new();
    for m in &g.members {
        if m.state == MemberState::Down {
            out.push(format!("member {} ({}) is down", m.serial, m.name));
            continue;
        }
        let have: std::collections::BTreeMap<u64, u64> = m.version_vector.iter().copied().collect();
        for (origin, top) in &best {
            let mine = have.get(origin).copied().unwrap_or(0);
            if mine < *top {
                out.push(format!(
                    "member {} ({}) lacks {} operation(s) from member {origin} (has {mine}, the group has {top})",
                    m.serial,
                    m.name,
                    top - mine
                ));
            }
        }
        if m.state == MemberState::Lagging {
            out.push(format!("member {} ({}) is lagging", m.serial, m.name));
        }
    }
    let digests: std::collections::BTreeSet<&str> = g
        .members
        .iter()
        .filter(|m| m.state != MemberState::Down)
        .map(|m| m.digest.as_str())
        .collect();
    if digests.len() > 1 && out.is_empty() {
        out.push("members hold different objects or attributes at the same version (digests differ)".into());
    }
    out
}

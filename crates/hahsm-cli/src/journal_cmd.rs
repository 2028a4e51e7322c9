//! `hahsm journal`: the members' audit journals merged into the report's
//! table 5.1 (date, action, one column per member and per registered client,
//! complete yes/no), and `hahsm journal verify`, which checks each member's
//! hash chain and compares its end with the head the member recorded.
//!
//! Which actions every member needs (the report's "*" actions): policies, PINs,
//! partitions and their activation, replication keys, and client registrations
//! and assignments. Group changes replicate by themselves, and certificates and
//! SO logins belong to one member: those are "-" (not needed) elsewhere.
use anyhow::bail;
use clap::{Args, Subcommand};
use hahsm_client::admin::AdminClient;
use hahsm_proto::admin::{AdminRequest as R, AdminResponse};
use hahsm_proto::journal::{self, JournalEntry, JournalHead};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct JournalArgs {
    /// A member's admin socket; repeat it for each member.
    #[arg(long = "socket", global = true)]
    sockets: Vec<PathBuf>,
    /// A member's data directory (its admin socket is inside); repeat it for each member.
    #[arg(long = "data-dir", global = true)]
    data_dirs: Vec<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<JournalCommand>,
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Check every member's journal: any edited, removed, reordered or cut-off
    /// entry is reported, and the exit code is 1.
    Verify {
        /// Check a copy of a journal file instead (no member needed; a cut-off
        /// tail cannot be seen without the member's recorded head).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// One member's journal as read over its admin socket.
struct MemberJournal {
    label: String,
    serial: u64,
    lines: Vec<String>,
    head: JournalHead,
    clients: Vec<String>,
}

async fn fetch(socket: &std::path::Path) -> anyhow::Result<MemberJournal> {
    let mut admin = AdminClient::connect(socket).await?;
    let mut lines = Vec::new();
    let (mut label, mut serial, mut head);
    loop {
        match admin
            .call(R::JournalRead {
                after: lines.len() as u64,
                limit: 1000,
            })
            .await?
        {
            AdminResponse::Journal {
                member,
                hsm_label,
                lines: page,
                head: h,
            } => {
                (label, serial, head) = (hsm_label, member, h);
                let last_page = page.len() < 1000;
                lines.extend(page);
                if last_page {
                    break;
                }
            }
            other => bail!("unexpected answer {other:?}"),
        }
    }
    if label.is_empty() {
        label = format!("member {serial}");
    }
    let clients = match admin.call(R::ClientList).await {
        Ok(AdminResponse::Clients(c)) => c.into_iter().map(|c| c.name).collect(),
        _ => Vec::new(),
    };
    Ok(MemberJournal {
        label,
        serial,
        lines,
        head,
        clients,
    })
}

fn sockets(args: &JournalArgs) -> anyhow::Result<Vec<PathBuf>> {
    let mut all = args.sockets.clone();
    all.extend(args.data_dirs.iter().map(|d| d.join("admin.sock")));
    if all.is_empty() {
        if let Ok(s) = std::env::var("HAHSM_ADMIN_SOCKET") {
            all.push(s.into());
        } else {
            bail!("name the members: --socket PATH or --data-dir DIR, once for each member");
        }
    }
    Ok(all)
}

pub async fn run(args: JournalArgs) -> anyhow::Result<()> {
    if let Some(JournalCommand::Verify { file: Some(file) }) = &args.command {
        let text = std::fs::read_to_string(file)?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        return report_verify(&[(file.display().to_string(), lines, None)]);
    }
    let mut members = Vec::new();
    let mut unreachable = Vec::new();
    for s in sockets(&args)? {
        match fetch(&s).await {
            Ok(m) => members.push(m),
            // One member down must not hide what the others say.
            Err(e) => unreachable.push(format!("{}: {e}", s.display())),
        }
    }
    for u in &unreachable {
        eprintln!("hahsm: cannot read the journal of {u}");
    }
    let result = match args.command {
        Some(JournalCommand::Verify { .. }) => {
            let all: Vec<_> = members
                .iter()
                .map(|m| {
                    (
                        format!("{} ({})", m.label, m.serial),
                        m.lines.clone(),
                        Some(m.head.clone()),
                    )
                })
                .collect();
            report_verify(&all)
        }
        None => table(&members, args.json),
    };
    result?;
    if !unreachable.is_empty() {
        bail!(
            "{} member(s) could not be read; the table leaves them out",
            unreachable.len()
        );
    }
    Ok(())
}

fn report_verify(journals: &[(String, Vec<String>, Option<JournalHead>)]) -> anyhow::Result<()> {
    let mut bad = 0;
    for (name, lines, head) in journals {
        match journal::verify(lines, head.as_ref(), sha256) {
            Ok(v) => println!(
                "{name}: {} entries, chain intact, head {}",
                v.head.count,
                if v.head.hash.is_empty() { "-" } else { &v.head.hash }
            ),
            Err(problems) => {
                bad += 1;
                println!("{name}: JOURNAL DOES NOT VERIFY");
                for p in problems {
                    println!("  {p}");
                }
            }
        }
    }
    if bad > 0 {
        bail!("{bad} journal(s) failed verification");
    }
    Ok(())
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether every member must do the action itself (the report's "*").
fn needed_on_every_member(action: &str) -> bool {
    matches!(
        action,
        "HsmChangePolicy"
            | "PartitionCreate"
            | "PartitionChangePolicy"
            | "PartitionChangePin"
            | "PartitionChangeSoPin"
            | "PartitionActivate"
            | "PartitionDeactivate"
            | "HaPrepare"
            | "ClientRegister"
            | "ClientRemove"
            | "ClientAssignPartition"
            | "ClientRevokePartition"
    )
}

/// The client an action concerns, from its object (`client NAME …`).
fn client_of(e: &JournalEntry) -> Option<&str> {
    e.object.strip_prefix("client ")?.split(' ').next()
}

/// The action as a reader wants it: the request's name, its object, and a
/// policy's new value.
fn describe(e: &JournalEntry) -> String {
    let value = e
        .request
        .split("value: ")
        .nth(1)
        .and_then(|v| v.split([' ', ',', '}']).next())
        .filter(|_| e.action.ends_with("ChangePolicy"));
    match value {
        Some(v) => format!("{} {} = {v}", e.action, e.object),
        None => format!("{} {}", e.action, e.object),
    }
}

#[derive(Serialize)]
struct Row {
    date: String,
    action: String,
    /// Per member label: "done", "pending", "refused" or "not-needed".
    members: BTreeMap<String, String>,
    /// Per registered client, the same.
    clients: BTreeMap<String, String>,
    complete: bool,
    notes: String,
}

fn rows(members: &[MemberJournal]) -> (Vec<Row>, Vec<String>) {
    let mut clients: Vec<String> = members.iter().flat_map(|m| m.clients.clone()).collect();
    clients.sort();
    clients.dedup();
    let mut problems = Vec::new();
    // Rows in order of first appearance, keyed so that one action done on
    // several members is one row.
    let mut order: Vec<String> = Vec::new();
    let mut by_key: BTreeMap<String, Vec<(usize, JournalEntry)>> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        let entries = match journal::verify(&m.lines, Some(&m.head), sha256) {
            Ok(v) => v.entries,
            Err(_) => {
                problems.push(format!(
                    "the journal of {} does not verify: run `hahsm journal verify`",
                    m.label
                ));
                m.lines
                    .iter()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            }
        };
        for e in entries {
            let key = if needed_on_every_member(&e.action) {
                format!("{}|{}", e.action, e.request)
            } else {
                // One row per entry: a member-local action is its own row.
                format!("{i}|{}", e.seq)
            };
            if !by_key.contains_key(&key) {
                order.push(key.clone());
            }
            by_key.entry(key).or_default().push((i, e));
        }
    }
    let mut out = Vec::new();
    for key in order {
        let group = &by_key[&key];
        let first = &group[0].1;
        // An action refused everywhere it was tried is needed nowhere: it shows
        // as refused, not as pending on every member.
        let every = needed_on_every_member(&first.action) && group.iter().any(|(_, e)| e.done());
        let mut per_member = BTreeMap::new();
        let mut pending_on = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let mine: Vec<&JournalEntry> = group.iter().filter(|(j, _)| *j == i).map(|(_, e)| e).collect();
            let state = if mine.iter().any(|e| e.done()) {
                "done"
            } else if every {
                pending_on.push(m.label.clone());
                "pending"
            } else if !mine.is_empty() {
                "refused"
            } else {
                "not-needed"
            };
            per_member.insert(m.label.clone(), state.to_string());
        }
        let mut per_client = BTreeMap::new();
        for c in &clients {
            let state = if client_of(first) == Some(c.as_str()) && every {
                if pending_on.is_empty() {
                    "done"
                } else {
                    "pending"
                }
            } else {
                "not-needed"
            };
            per_client.insert(c.clone(), state.to_string());
        }
        let refused_only = per_member.values().all(|s| s == "refused" || s == "not-needed")
            && per_member.values().any(|s| s == "refused");
        out.push(Row {
            date: first.time.replace('T', " ").trim_end_matches('Z').to_string(),
            action: describe(first),
            complete: pending_on.is_empty() && !refused_only,
            notes: if !pending_on.is_empty() {
                format!("to be done on {}", pending_on.join(", "))
            } else if refused_only {
                group
                    .iter()
                    .find_map(|(_, e)| e.result.strip_prefix("refused: "))
                    .map(|why| format!("refused: {why}"))
                    .unwrap_or_default()
            } else {
                String::new()
            },
            members: per_member,
            clients: per_client,
        });
    }
    (out, problems)
}

fn table(members: &[MemberJournal], json: bool) -> anyhow::Result<()> {
    let (rows, problems) = rows(members);
    let pending: Vec<String> = rows
        .iter()
        .filter(|r| {
            r.members
                .values()
                .chain(r.clients.values())
                .any(|s| s == "pending")
        })
        .map(|r| format!("{} {}: {}", r.date, r.action, r.notes))
        .collect();
    if json {
        let heads: Vec<_> = members
            .iter()
            .map(|m| serde_json::json!({"member": m.label, "serial": m.serial, "entries": m.head.count, "head": m.head.hash}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "rows": rows, "pending": pending, "heads": heads, "problems": problems,
            }))?
        );
        return Ok(());
    }
    let mark = |s: &str| match s {
        "done" => "✓",
        "pending" => "×",
        "refused" => "!",
        _ => "-",
    };
    let mut columns: Vec<String> = members.iter().map(|m| m.label.clone()).collect();
    let client_names: Vec<String> = rows
        .first()
        .map(|r| r.clients.keys().cloned().collect())
        .unwrap_or_default();
    columns.extend(client_names.iter().map(|c| format!("client {c}")));
    print!("{:<19}  {:<60}", "date", "action");
    for c in &columns {
        print!(" {:>10}", truncate(c, 10));
    }
    println!("  complete  notes");
    for r in &rows {
        print!("{:<19}  {:<60}", r.date, truncate(&r.action, 60));
        for m in members {
            print!(" {:>10}", mark(&r.members[&m.label]));
        }
        for c in &client_names {
            print!(" {:>10}", mark(&r.clients[c]));
        }
        println!("  {:<8}  {}", if r.complete { "yes" } else { "no" }, r.notes);
    }
    println!("✓ done   × pending (to be done there)   ! refused   - not needed there");
    for m in members {
        println!(
            "{} ({}): {} entries, head {}",
            m.label, m.serial, m.head.count, m.head.hash
        );
    }
    if pending.is_empty() {
        println!("no action is pending anywhere");
    } else {
        println!("pending:");
        for p in &pending {
            println!("  {p}");
        }
    }
    for p in &problems {
        println!("WARNING: {p}");
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

//! `hahsm`, the operator CLI. It replaces the appliance shell (`hahsm appliance`,
//! over the member's local admin socket), `vtl` (`hahsm client`) and `cmu`
//! (`hahsm keys`, over the mutual-TLS link).
//!
//! Exit codes: 0 success, 1 the command failed (the member refused it or could
//! not be reached), 2 the command line was wrong.
use clap::{Parser, Subcommand};
use common::error_chain;
use std::process::ExitCode;

mod appliance_cmd;
mod assets_cmd;
mod bench;
mod client_cmd;
mod common;
mod custody_cmd;
mod demo_cmd;
mod ha_cmd;
mod journal_cmd;
mod keys_cmd;
mod monitor_cmd;

#[derive(Parser)]
#[command(name = "hahsm", version, about = "Operate a hahsm cluster of network HSMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Administer one member over its local admin socket (the appliance console).
    Appliance(appliance_cmd::ApplianceArgs),
    /// The client side: certificates, trusted servers and the client config.
    Client(client_cmd::ClientArgs),
    /// A local HA group of N members, set up end to end, for a first look.
    Demo(demo_cmd::DemoArgs),
    /// HA groups: prepare, create, add and remove members, sync status.
    Ha(ha_cmd::HaArgs),
    /// Manage and use keys on a member, over the mutual-TLS link.
    Keys(keys_cmd::KeysArgs),
    /// Measure the PKCS#11 module as applications use it, against aws-lc-rs and SoftHSM2;
    /// the report's performance tests as scenarios.
    Bench(bench::BenchArgs),
    /// The members' audit journals merged into one table; `journal verify` checks them.
    Journal(journal_cmd::JournalArgs),
    /// The cloning-domain secret: split it into M-of-N shares.
    Domain(custody_cmd::DomainCmdArgs),
    /// Write an encrypted backup of a partition (needs the domain and owner secrets).
    Backup(custody_cmd::BackupArgs),
    /// Restore a backup as a new partition on a member.
    Restore(custody_cmd::RestoreArgs),
    /// The HA group, live: member states, lag, sync and policy drift.
    Monitor(monitor_cmd::MonitorArgs),
    /// Write the man pages and shell completions (for packaging).
    #[command(hide = true)]
    GenerateAssets(assets_cmd::GenerateAssetsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hahsm: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Appliance(a) => appliance_cmd::run(a).await,
            Command::Client(c) => client_cmd::run(c).await,
            Command::Ha(h) => ha_cmd::run(h).await,
            Command::Demo(d) => demo_cmd::run(d).await,
            Command::Keys(k) => keys_cmd::run(k).await,
            Command::Bench(b) => bench::run(b).await,
            Command::Journal(j) => journal_cmd::run(j).await,
            Command::Domain(d) => custody_cmd::run_domain(d),
            Command::Backup(b) => custody_cmd::backup(b).await,
            Command::Restore(r) => custody_cmd::restore(r).await,
            Command::Monitor(m) => monitor_cmd::run(m).await,
            Command::GenerateAssets(a) => assets_cmd::run(a),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hahsm: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

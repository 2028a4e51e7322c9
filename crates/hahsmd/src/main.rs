//! `hahsmd --config FILE`: runs one appliance member until SIGTERM or SIGINT;
//! SIGHUP reloads the alert targets and the log level and reopens the log file.
//! Started by systemd, it reports readiness and pings the watchdog (sd_notify).
use clap::Parser;
use hahsmd::config::Config;
use hahsmd::logging::Logging;
use hahsmd::{admin, appliance::Appliance, server};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(version, about = "The hahsm appliance daemon (one per HSM member)")]
struct Args {
    /// The member's TOML configuration.
    #[arg(long, short, env = "HAHSMD_CONFIG")]
    config: PathBuf,
    /// The address peers and clients reach this member by (the config's
    /// `advertise_address`, which this overrides): for containers, whose
    /// shared config cannot know it.
    #[arg(long, env = "HAHSMD_ADVERTISE_ADDRESS")]
    advertise_address: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hahsmd: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(a) = args.advertise_address.filter(|a| !a.is_empty()) {
        if let Err(e) = hahsmd::config::validate_advertise(&a) {
            eprintln!("hahsmd: --advertise-address: {e}");
            return ExitCode::from(2);
        }
        config.advertise_address = Some(a);
    }
    let logging = match hahsmd::logging::start(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hahsmd: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hahsmd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config, &args.config, &logging)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("hahsmd: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// After SIGHUP: reads the config again and applies what can change
/// without a restart: the alert targets, the log level, the log file.
fn reload(app: &Appliance, path: &std::path::Path, logging: &Logging) {
    match Config::load(path) {
        Ok(config) => {
            app.monitor.set_alert_targets(config.monitoring.alerts.clone());
            match logging.reload(&config) {
                // At warn, so that it shows whatever level was chosen.
                Ok(()) => tracing::warn!("configuration reloaded: alert targets, log level, log file"),
                Err(e) => tracing::warn!("configuration reload: {e:#}"),
            }
        }
        Err(e) => tracing::warn!("configuration not reloaded, the running one stays: {e:#}"),
    }
}

async fn run(config: Config, config_path: &std::path::Path, logging: &Logging) -> anyhow::Result<()> {
    let admin_path = config.admin_socket();
    let listen = config.listen.clone();
    let app = tokio::task::spawn_blocking(move || Appliance::open(config)).await??;
    // The partitions activated by themselves rejoin their groups.
    hahsmd::replication::resume_all(&app);
    app.tls_acceptor()?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let admin_listener = admin::bind(&admin_path)
        .map_err(|e| anyhow::anyhow!("cannot bind the admin socket {}: {e}", admin_path.display()))?;
    // Tests and scripts that listen on port 0 read the real address here.
    let bound = listener.local_addr()?;
    tracing::info!(
        listen = %bound,
        admin = %admin_path.display(),
        serial = app.serial,
        "hahsmd ready"
    );
    let _ = app.bound_client.set(bound.to_string());
    if let Some(peer_listen) = app.config.peer_listen.clone() {
        let peers = tokio::net::TcpListener::bind(&peer_listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for peers on {peer_listen}: {e}"))?;
        let peer_bound = peers.local_addr()?;
        hahsmd::write_atomically(&app.config.data_dir.join("peer.addr"), &peer_bound.to_string())?;
        let _ = app.bound_peer.set(peer_bound.to_string());
        tracing::info!(peer_listen = %peer_bound, "peer listener ready");
        tokio::spawn(hahsmd::replication::serve_peers(app.clone(), peers));
    }
    tokio::spawn(admin::serve(app.clone(), admin_listener));
    // Monitoring: the metrics endpoint, the alert dispatcher, the watch loop.
    hahsmd::endpoint::start_metrics(&app).await;
    {
        let app = app.clone();
        tokio::spawn(async move {
            let metrics = app.monitor.metrics.clone();
            app.monitor
                .set_alert_targets(app.config.monitoring.alerts.clone());
            app.monitor
                .alerts
                .dispatch(app.config.data_dir.clone(), metrics)
                .await;
        });
    }
    tokio::spawn(hahsmd::watch::watch(app.clone()));
    tokio::spawn(hahsmd::compaction::compact_logs(app.clone()));
    // Written last: its presence tells scripts and tests the member is ready.
    hahsmd::write_atomically(&app.config.data_dir.join("listen.addr"), &bound.to_string())?;
    tokio::spawn(server::serve(app.clone(), listener));
    notify_ready();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hangup.recv() => reload(&app, config_path, logging),
        }
    }
    tracing::info!("shutting down");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&admin_path);
    Ok(())
}

/// Under systemd (`Type=notify`, packaging/hahsmd.service): tells the service
/// manager the member is ready, and pings its watchdog at half the interval it
/// asks for. Without `NOTIFY_SOCKET` (not started by systemd) both do nothing.
/// The environment is left as it is: the runtime's threads are running.
fn notify_ready() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        let period = std::time::Duration::from_micros(usec / 2);
        tracing::info!(
            interval_ms = period.as_millis() as u64,
            "pinging the systemd watchdog"
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]) {
                    tracing::warn!(error = %e, "cannot ping the systemd watchdog");
                }
            }
        });
    }
}

//! The monitoring endpoint: a small HTTP/1.1 server (hyper) on the metrics
//! listener, bound to localhost unless configured otherwise, with no
//! authentication and no secret in any answer:
//! - `GET /metrics`: each scrape reads the member's state (partitions,
//!   groups, the store's size) into the gauges;
//! - `GET /health/live`: 200 while the process serves;
//! - `GET /health/ready`: 200 serving keys, 429 standby, 503 not serving
//!   (see `health.rs`), with the reason in one line, or as JSON with
//!   `?format=json`; the codes can be changed by query parameters.
//!
//! It never writes.
use crate::appliance::Appliance;
use crate::health;
use crate::metrics::ScrapedState;
use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Scrape connections served at once; more wait in the TCP backlog.
const MAX_SCRAPERS: usize = 32;
/// A scraper sends its request at once: one that has not within this long
/// is closed, so idle connections cannot hold the endpoint.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Any scrape connection is closed after this long.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the metrics endpoint, if configured, and records its address in
/// `<data_dir>/metrics.addr`. A port in use does not stop the member: the
/// HSM keeps serving, and the error is logged.
pub async fn start_metrics(app: &Arc<Appliance>) {
    let listen = app.config.monitoring.metrics_listen.trim().to_string();
    let _ = std::fs::remove_file(app.config.metrics_addr_path());
    if listen.is_empty() {
        info!("metrics endpoint off (monitoring.metrics_listen is empty)");
        return;
    }
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            warn!(listen, error = %e, "cannot bind the metrics endpoint; the member runs without it");
            return;
        }
    };
    let Ok(bound) = listener.local_addr() else {
        return;
    };
    // The URL the group shows for this member: its advertised address, which
    // others can open, rather than a wildcard.
    let shown = crate::config::advertised(
        &bound.to_string(),
        app.config.advertise_address.as_deref(),
        "metrics_listen",
    )
    .unwrap_or_else(|_| bound.to_string());
    let url = format!("http://{shown}/metrics");
    if let Err(e) = crate::write_atomically(&app.config.metrics_addr_path(), &bound.to_string()) {
        warn!(error = %e, "cannot write metrics.addr");
    }
    app.monitor.set_metrics_url(url.clone());
    if !bound.ip().is_loopback() {
        warn!(%bound, "the metrics endpoint is reachable from other hosts: it needs no credentials");
    }
    info!(metrics = %url, "metrics endpoint ready");
    tokio::spawn(serve_metrics(app.clone(), listener));
}

async fn serve_metrics(app: Arc<Appliance>, listener: tokio::net::TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&app, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

fn answer<B>(app: &Appliance, req: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    let reply = |status: hyper::StatusCode, content_type: &str, body: String| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    let query = req.uri().query();
    match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => reply(
            hyper::StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            app.monitor.metrics.render(&scraped(app)),
        ),
        (&hyper::Method::GET, "/health/live") => {
            if health::wants_json(query) {
                reply(
                    hyper::StatusCode::OK,
                    "application/json",
                    "{\"live\":true}\n".into(),
                )
            } else {
                reply(hyper::StatusCode::OK, "text/plain", "live\n".into())
            }
        }
        (&hyper::Method::GET, "/health/ready") => {
            let codes = match health::Codes::from_query(query) {
                Ok(c) => c,
                Err(e) => return reply(hyper::StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
            };
            let verdict = readiness(app);
            let status = hyper::StatusCode::from_u16(codes.of(verdict.readiness))
                .unwrap_or(hyper::StatusCode::SERVICE_UNAVAILABLE);
            if health::wants_json(query) {
                let body = serde_json::to_string(&verdict).unwrap_or_default();
                reply(status, "application/json", body + "\n")
            } else {
                reply(status, "text/plain", format!("{}\n", verdict.reason))
            }
        }
        (&hyper::Method::GET, _) => reply(
            hyper::StatusCode::NOT_FOUND,
            "text/plain",
            "the metrics are at /metrics, the health at /health/live and /health/ready\n".into(),
        ),
        _ => reply(
            hyper::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ),
    }
}

/// The member's readiness, from each activated partition and its group.
fn readiness(app: &Appliance) -> health::Verdict {
    let partitions = app
        .active_partitions()
        .iter()
        .map(|p| match crate::replication::group_of(app, &p.name) {
            Some(g) => g.health_of(p),
            None => health::PartitionHealth {
                partition: p.name.clone(),
                group: None,
                standby: false,
                cut_off: false,
                catching_up_with: Vec::new(),
            },
        })
        .collect();
    health::readiness(app.is_initialized(), partitions)
}

/// The member's state as a scrape reads it.
fn scraped(app: &Appliance) -> ScrapedState {
    ScrapedState {
        store_bytes: store_size(app),
        partitions: app.partition_list().unwrap_or_default(),
        groups: crate::replication::show(app, None).unwrap_or_default(),
        certificate_not_after: hahsm_link::load_cert_pem(&app.config.cert_path())
            .ok()
            .and_then(|cert| hahsm_crypto::certificate_not_after(&cert)),
    }
}

fn store_size(app: &Appliance) -> u64 {
    let db = app.config.store_path();
    let mut total = 0;
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        total += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    }
    total
}

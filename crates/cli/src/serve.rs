//! `billsync run`: the long-running agent, with `/metrics` and `/healthz` served over HTTP.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use axum::http::{StatusCode, header};
use billsync::Agent;
use tokio_util::sync::CancellationToken;

/// The content type of the Prometheus text exposition that `Metrics::render` writes
/// (OpenMetrics 1.0.0, as `prometheus-client`'s text encoder produces it).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/healthz` and `/metrics` for `agent`.
fn router(agent: Agent) -> axum::Router {
    let health_agent = agent.clone();
    let health = move || {
        let agent = health_agent.clone();
        async move {
            // Whether the outbox pushes back now (its count is read at most once a second).
            if let Err(e) = agent.backpressure().await {
                tracing::warn!(error = %e, "cannot tell whether the outbox pushes back");
            }
            let health = agent.health();
            let status = StatusCode::from_u16(health.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, axum::Json(health))
        }
    };
    let metrics = move || {
        let agent = agent.clone();
        async move {
            agent.refresh_gauges().await;
            ([(header::CONTENT_TYPE, OPENMETRICS)], agent.metrics().render())
        }
    };
    axum::Router::new().route("/healthz", axum::routing::get(health)).route("/metrics", axum::routing::get(metrics))
}

/// `billsync run`: the agent until SIGTERM or SIGINT, with `/metrics` and `/healthz`.
///
/// # Errors
/// When the listen address cannot be bound.
pub async fn run(agent: Agent, listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    // Port 0 picks a free port: say which.
    let listen = listener.local_addr().with_context(|| format!("cannot listen on {listen}"))?;
    let stop = CancellationToken::new();
    let server = axum::serve(listener, router(agent.clone())).with_graceful_shutdown(stop.clone().cancelled_owned());
    let server = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the /metrics and /healthz server failed");
        }
    });
    tracing::info!(%listen, tenants = agent.config().tenants.len(), "billsync agent running");
    eprintln!("billsync run: serving /metrics and /healthz on http://{listen}");
    let ingest = match &agent.config().ingest {
        Some(config) => {
            let (at, task) = crate::ingest::serve(agent.clone(), config, stop.clone()).await?;
            let scheme = if config.tls.is_some() { "https" } else { "http" };
            tracing::info!(listen = %at, "ingest running");
            eprintln!("billsync run: taking events on {scheme}://{at}/v1/tenants/{{name}}/events");
            Some(task)
        }
        None => None,
    };
    let mqtt = match &agent.config().mqtt {
        Some(config) => {
            let task = crate::mqtt::serve(agent.clone(), config, stop.clone())?;
            eprintln!(
                "billsync run: taking events from {} on {} (client id {})",
                config.url,
                config.subscription(),
                config.client_id
            );
            Some(task)
        }
        None => None,
    };
    let engine = {
        let agent = agent.clone();
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move { agent.run_until(stopped).await })
    };
    shutdown_signal().await;
    eprintln!("billsync run: stopping (finishing requests in flight)");
    stop.cancel();
    // In-flight requests get until 9 s; whatever is still leased after that is returned to
    // pending by its lease's expiry, and the platform's deduplication absorbs a resend.
    if tokio::time::timeout(Duration::from_secs(9), engine).await.is_err() {
        tracing::warn!("requests still in flight after 9 s; their leases expire and they are resent");
    }
    if let Some(ingest) = ingest {
        // Requests being stored finish (their devices get their answer); new ones are refused.
        if tokio::time::timeout(Duration::from_secs(5), ingest).await.is_err() {
            tracing::warn!("the ingest did not stop within 5 s");
        }
    }
    if let Some(mqtt) = mqtt {
        // The run being stored is acknowledged, then the session is closed (the broker keeps it).
        let _ = mqtt.await;
    }
    if tokio::time::timeout(Duration::from_millis(500), server).await.is_err() {
        tracing::warn!("the /metrics server did not stop within 500 ms");
    }
    agent.save_state().await;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
                ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c().await;
}

async fn ctrl_c() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        // Without any signal to wait for, the only way out is to be killed: wait for that.
        tracing::error!(error = %e, "cannot watch Ctrl-C");
        std::future::pending::<()>().await;
    }
}

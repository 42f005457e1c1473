//! The HTTP ingest of `billsync run` (`[ingest] listen`): devices `POST` their events to
//! `/v1/tenants/{name}/events` and get `200` only once the outbox has committed them. The rules
//! (formats, limits, tokens) are the library's, `billsync::ingest`; this is the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use billsync::Agent;
use billsync::config::{IngestConfig, IngestTls};
use billsync::ingest::{BodyFormat, BodyRefusal, MAX_BODY_BYTES, read_body};
use billsync_domain::EventRules;
use secrecy::ExposeSecret as _;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a client is told to wait when the outbox pushes back.
const RETRY_AFTER_SECONDS: u64 = 5;

/// The ingest's routes for `agent`; a body must arrive within `read_timeout`.
pub fn router(agent: Agent, read_timeout: Duration) -> axum::Router {
    axum::Router::new()
        .route("/v1/tenants/{name}/events", axum::routing::post(events))
        // The body's limit is checked by the handler, after the token.
        .layer(DefaultBodyLimit::disable())
        .with_state(Ingest { agent, read_timeout })
}

/// What the handler needs.
#[derive(Clone)]
struct Ingest {
    agent: Agent,
    read_timeout: Duration,
}

/// A refusal as JSON: `{"error": code, "message": ...}`.
fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": code, "message": message.into() }))).into_response()
}

fn unauthorized() -> Response {
    let mut response = refuse(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send Authorization: Bearer <the tenant's ingest token> to a tenant of this agent",
    );
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"billsync\""));
    response
}

fn too_large(what: &str) -> Response {
    refuse(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("{what}; split the events over several requests"))
}

/// `POST /v1/tenants/{name}/events`.
async fn events(State(ingest): State<Ingest>, Path(name): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let Ingest { agent, read_timeout } = ingest;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(tenant) = agent.authorize_ingest(&name, bearer) else {
        return unauthorized();
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let Some(format) = BodyFormat::of(content_type) else {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {} is not taken: send application/x-ndjson (JSON Lines) or application/json",
                content_type.unwrap_or("(none)")
            ),
        );
    };
    let too_big = format!("the body is over {} MiB", MAX_BODY_BYTES / (1024 * 1024));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return too_large(&too_big);
    }
    let bytes: Bytes = match tokio::time::timeout(read_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => bytes,
        // Over the limit, or the client went away mid-body (then no one reads the answer).
        Ok(Err(_)) => return too_large(&too_big),
        Err(_) => {
            let said = format!("the body did not arrive within {} s; nothing was stored", read_timeout.as_secs());
            return refuse(StatusCode::REQUEST_TIMEOUT, "timeout", said);
        }
    };
    let read =
        tokio::task::spawn_blocking(move || read_body(format, &bytes, &EventRules::default(), chrono::Utc::now()))
            .await;
    let events = match read {
        Ok(Ok(events)) => events,
        Ok(Err(refusal)) => return refused_body(&agent, tenant.as_str(), &refusal),
        Err(e) => {
            tracing::error!(error = %e, "reading an ingest body failed");
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the body could not be read; nothing was stored",
            );
        }
    };
    store(&agent, &tenant, &events).await
}

/// Stores the events and answers: `200` once committed, `503` while the outbox pushes back or fails.
async fn store(
    agent: &Agent,
    tenant: &billsync_domain::TenantName,
    events: &[billsync_domain::EncodedEvent],
) -> Response {
    match agent.ingest(tenant, events).await {
        Ok(report) => (StatusCode::OK, Json(json!({ "stored": report.stored, "duplicates": report.duplicates.len() })))
            .into_response(),
        Err(e) if e.is_temporary() => unavailable("backpressure", e.to_string()),
        Err(e) => {
            tracing::error!(tenant = %tenant, error = format!("{:#}", anyhow::Error::new(e)), "the ingest could not store events");
            unavailable("storage", "the outbox could not store the events; nothing was stored")
        }
    }
}

/// `503` with `Retry-After`: nothing was stored, and trying again later may succeed.
fn unavailable(code: &str, message: impl Into<String>) -> Response {
    let mut response = refuse(StatusCode::SERVICE_UNAVAILABLE, code, message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

fn refused_body(agent: &Agent, tenant: &str, refusal: &BodyRefusal) -> Response {
    match refusal {
        BodyRefusal::TooManyEvents { .. } => too_large(&refusal.to_string()),
        BodyRefusal::Malformed { .. } => refuse(StatusCode::BAD_REQUEST, "invalid_body", refusal.to_string()),
        BodyRefusal::Invalid { errors, total } => {
            agent.metrics().ingested(tenant, "invalid", *total as u64);
            let body = json!({
                "error": "invalid_events",
                "message": refusal.to_string(),
                "total": total,
                "errors": errors,
            });
            (StatusCode::BAD_REQUEST, Json(body)).into_response()
        }
    }
}

/// Binds the ingest and serves it until `stop`; returns where it listens (a port of 0 picks a
/// free one) and the server's task.
///
/// # Errors
/// The address cannot be bound, or the TLS certificate or key cannot be used.
pub async fn serve(
    agent: Agent,
    config: &IngestConfig,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listen = config.listen;
    let app = router(agent, config.read_timeout).into_make_service();
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("[ingest] cannot listen on {listen}"))?;
    let addr = listener.local_addr().with_context(|| format!("[ingest] cannot listen on {listen}"))?;
    let handle = axum_server::Handle::new();
    let mut server = axum_server::Server::<SocketAddr>::from_listener(listener).handle(handle.clone());
    // A client that does not finish its headers in time is disconnected.
    server.http_builder().http1().header_read_timeout(Some(config.read_timeout));
    tokio::spawn(async move {
        stop.cancelled().await;
        // Requests being stored finish; new ones are refused.
        handle.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let task = match &config.tls {
        None => tokio::spawn(async move { log_end(server.serve(app).await) }),
        Some(tls) => {
            let rustls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(server_config(tls)?));
            let server = server.acceptor(axum_server::tls_rustls::RustlsAcceptor::new(rustls));
            tokio::spawn(async move { log_end(server.serve(app).await) })
        }
    };
    Ok((addr, task))
}

fn log_end(result: std::io::Result<()>) {
    if let Err(e) = result {
        tracing::error!(error = %e, "the ingest server failed");
    }
}

/// The rustls server configuration of the ingest's certificate chain and key (ring, as the
/// agent's clients use; HTTP/1.1).
fn server_config(tls: &IngestTls) -> anyhow::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let cert_file = tls.cert_file.display();
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("[ingest] tls_cert_file {cert_file}: not a readable PEM certificate chain"))?;
    if certs.is_empty() {
        anyhow::bail!("[ingest] tls_cert_file {cert_file}: holds no certificate");
    }
    // The key's own text never reaches a message.
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.expose_secret().as_bytes()).map_err(|_| {
        anyhow::anyhow!(
            "[ingest] tls_key_file {}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            tls.key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("[ingest] TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "[ingest] tls_cert_file {cert_file} and tls_key_file {}: do not make a usable pair",
                tls.key_file.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

//! The HTTP ingest of `billsync run`: devices post events; `200` only after the commit; every
//! refusal by name, with nothing of a refused request stored.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Env, env, line, status_json};

pub(crate) const ACME_TOKEN: &str = "acme-ingest-token-0123456789";
pub(crate) const INITECH_TOKEN: &str = "initech-ingest-token-9876543210";

/// A running `billsync run` with its ingest.
pub(crate) struct Running {
    pub(crate) child: Child,
    /// `http(s)://127.0.0.1:PORT`.
    pub(crate) ingest: String,
    /// `http://127.0.0.1:PORT` of /metrics and /healthz.
    pub(crate) ops: String,
    /// Everything it wrote to stderr so far (drained by a thread).
    pub(crate) stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn url(&self, tenant: &str) -> String {
        format!("{}/v1/tenants/{tenant}/events", self.ingest)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `billsync run` on `config` with extra environment, and waits for both its servers.
pub(crate) fn start(config: &Path, vars: &[(&str, &str)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_billsync"))
        .arg("--config")
        .arg(config)
        .args(["run", "--listen", "127.0.0.1:0"])
        .env("SECRET_ACME", "secret-acme")
        .env("SECRET_INITECH", "secret-initech")
        .env("INGEST_ACME", ACME_TOKEN)
        .envs(vars.iter().copied())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (stderr, rx) = crate::stderr_lines(&mut child);
    let (mut ingest, mut ops) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ingest.is_none() || ops.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(l) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("billsync run did not start its servers: {}", stderr.lock().unwrap());
        };
        if let Some(rest) = l.strip_prefix("billsync run: serving /metrics and /healthz on ") {
            ops = Some(rest.trim().to_owned());
        }
        if let Some(rest) = l.strip_prefix("billsync run: taking events on ") {
            ingest = Some(rest.trim().trim_end_matches("/v1/tenants/{name}/events").to_owned());
        }
    }
    Running { child, ingest: ingest.unwrap(), ops: ops.unwrap(), stderr }
}

/// Adds text before the first `[[tenants]]` table, and `tenant_extra` to the tenant `name`.
pub(crate) fn configure(env: &Env, head: &str, tenant_extra: &[(&str, &str)]) {
    let mut cfg = std::fs::read_to_string(&env.config).unwrap();
    cfg = cfg.replacen("[[tenants]]", &format!("{head}\n[[tenants]]"), 1);
    for (name, extra) in tenant_extra {
        let at = format!("name = \"{name}\"\n");
        cfg = cfg.replacen(&at, &format!("{at}{extra}\n"), 1);
    }
    std::fs::write(&env.config, cfg).unwrap();
}

pub(crate) fn events(prefix: &str, n: usize) -> String {
    (0..n).map(|i| line(&format!("{prefix}-{i}"), "\"1\"")).collect::<Vec<_>>().join("\n")
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = client.post(url).header("content-type", content_type).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Two tenants: acme with a token from the environment, initech with one from a file.
async fn two_tenants(head: &str) -> Env {
    let env = env(&[("acme", "acme-prod-001", "app-acme"), ("initech", "initech-prod-001", "app-initech")]).await;
    let token_file = env.dir.path().join("initech.token");
    std::fs::write(&token_file, format!("{INITECH_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    configure(
        &env,
        head,
        &[("acme", "ingest_token_env = \"INGEST_ACME\""), ("initech", "ingest_token_file = \"initech.token\"")],
    );
    env
}

/// Posts a body just over 10 MiB on a raw connection, reading the answer while writing: the
/// ingest answers `413` from the declared length without reading the body, and closes, so a
/// client that writes before it reads may see a broken pipe instead of the answer.
async fn oversized(base: &str, path: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let length = 10 * 1024 * 1024 + 1;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {length}\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        write.write_all(&vec![b' '; length]).await
    });
    let mut answer = vec![0; 4096];
    let n = read.read(&mut answer).await.unwrap();
    writer.abort();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

async fn metric(client: &reqwest::Client, running: &Running, series: &str) -> Option<f64> {
    let text = client.get(format!("{}/metrics", running.ops)).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_refuses_by_name_and_stores_nothing_it_refuses() {
    // Arrange
    let env = two_tenants("[ingest]\nlisten = \"127.0.0.1:0\"\n").await;
    let running = start(&env.config, &[]);
    let client = reqwest::Client::new();
    let acme = running.url("acme");
    let good = events("in", 3);

    // Act and assert: 401 alike for no token, a wrong one, another tenant's, an unknown tenant.
    for (url, token) in [
        (acme.as_str(), None),
        (acme.as_str(), Some("acme-ingest-token-0123456780")),
        (acme.as_str(), Some(INITECH_TOKEN)),
        (&running.url("nobody"), Some(ACME_TOKEN)),
    ] {
        let (status, headers, body) = post(&client, url, token, "application/x-ndjson", good.clone()).await;
        assert_eq!(status, 401, "{url} {token:?}: {body}");
        assert_eq!(body["error"], "unauthorized");
        assert_eq!(headers["www-authenticate"], "Bearer realm=\"billsync\"");
    }
    // 415: neither JSON Lines nor JSON.
    let (status, _, body) = post(&client, &acme, Some(ACME_TOKEN), "text/plain", good.clone()).await;
    assert_eq!((status, body["error"].as_str()), (415, Some("unsupported_media_type")), "{body}");
    // 413: more than 10,000 events, and more than 10 MiB.
    let (status, _, body) = post(&client, &acme, Some(ACME_TOKEN), "application/x-ndjson", events("big", 10_001)).await;
    assert_eq!((status, body["error"].as_str()), (413, Some("too_large")), "{body}");
    let answer = oversized(&running.ingest, "/v1/tenants/acme/events", ACME_TOKEN).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // 400: all or nothing, each bad event by line (JSON Lines) or index (JSON).
    let bad = [line("ok-1", "\"1\""), line("bad-1", "1.5"), "{oops".to_owned()].join("\n");
    let (status, _, body) = post(&client, &acme, Some(ACME_TOKEN), "application/x-ndjson", bad).await;
    assert_eq!((status, body["error"].as_str(), body["total"].as_u64()), (400, Some("invalid_events"), Some(2)));
    assert_eq!((body["errors"][0]["line"].as_u64(), body["errors"][0]["field"].as_str()), (Some(2), Some("quantity")));
    assert_eq!(body["errors"][1]["field"], "json", "{body}");
    let array = format!("[{}, {}]", line("ok-2", "\"1\""), line("bad-2", "\"-1\""));
    let (status, _, body) = post(&client, &acme, Some(ACME_TOKEN), "application/json", array).await;
    assert_eq!((status, body["errors"][0]["index"].as_u64()), (400, Some(1)), "{body}");
    assert_eq!(status_json(&env)["tenants"][0]["pending"], 0, "nothing of a refused request is stored");

    // 200 after the commit, duplicates counted; the other shapes and the other tenant's token.
    let (status, _, body) = post(&client, &acme, Some(ACME_TOKEN), "application/x-ndjson", good.clone()).await;
    assert_eq!((status, &body), (200, &serde_json::json!({ "stored": 3, "duplicates": 0 })));
    let (_, _, body) = post(&client, &acme, Some(ACME_TOKEN), "application/x-ndjson", good).await;
    assert_eq!(body, serde_json::json!({ "stored": 0, "duplicates": 3 }));
    let wrapped = format!("{{\"events\": [{}]}}", line("obj-1", "\"2\""));
    let (status, _, body) =
        post(&client, &running.url("initech"), Some(INITECH_TOKEN), "application/json", wrapped).await;
    assert_eq!((status, body["stored"].as_u64()), (200, Some(1)), "{body}");
    let status = status_json(&env);
    assert_eq!(
        (status["tenants"][0]["pending"].as_u64(), status["tenants"][1]["pending"].as_u64()),
        (Some(3), Some(1))
    );
    let stored = metric(&client, &running, "billsync_ingest_events_total{tenant=\"acme\",result=\"stored\"}").await;
    assert_eq!(stored, Some(3.0));
    let invalid = metric(&client, &running, "billsync_ingest_events_total{tenant=\"acme\",result=\"invalid\"}").await;
    assert_eq!(invalid, Some(3.0), "2 bad events in the first refusal, 1 in the second");
    let logged = running.stderr.lock().unwrap().clone();
    assert!(!logged.contains(ACME_TOKEN) && !logged.contains(INITECH_TOKEN), "{logged}");
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_a_token_takes_events_on_loopback_only() {
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    configure(&env, "[ingest]\nlisten = \"127.0.0.1:0\"\n", &[]);
    let running = start(&env.config, &[]);

    let (status, _, body) =
        post(&reqwest::Client::new(), &running.url("acme"), None, "application/x-ndjson", events("open", 2)).await;

    assert_eq!((status, body["stored"].as_u64()), (200, Some(2)), "{body}");
    // Off loopback, the same configuration is refused before anything starts.
    let cfg =
        std::fs::read_to_string(&env.config).unwrap().replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"");
    std::fs::write(&env.config, cfg).unwrap();
    let out = crate::billsync(&env, &["run", "--listen", "127.0.0.1:0"], None);
    assert!(!out.status.success());
    let said = crate::text(&out);
    assert!(said.contains("ingest.listen: 0.0.0.0:0 is not a loopback address"), "{said}");
    assert!(said.contains("set tls_cert_file and tls_key_file"), "{said}");
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_on_the_network_serves_tls_and_needs_every_tenants_token() {
    // Arrange: a certificate for 127.0.0.1, both tenants with tokens, a non-loopback bind.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let env = two_tenants(
        "[ingest]\nlisten = \"0.0.0.0:0\"\ntls_cert_file = \"ingest.crt\"\ntls_key_file = \"ingest.key\"\n",
    )
    .await;
    std::fs::write(env.dir.path().join("ingest.crt"), cert.cert.pem()).unwrap();
    let key = env.dir.path().join("ingest.key");
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let running = start(&env.config, &[]);
    assert!(running.ingest.starts_with("https://0.0.0.0:"), "{}", running.ingest);
    let port = running.ingest.rsplit(':').next().unwrap();
    let url = format!("https://127.0.0.1:{port}/v1/tenants/acme/events");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();

    // Act and assert: HTTPS with the token stores; without it, 401; plain HTTP is not served.
    let (status, _, body) = post(&client, &url, Some(ACME_TOKEN), "application/x-ndjson", events("tls", 2)).await;
    assert_eq!((status, body["stored"].as_u64()), (200, Some(2)), "{body}");
    let (status, _, _) = post(&client, &url, None, "application/x-ndjson", events("tls", 2)).await;
    assert_eq!(status, 401);
    let plain = reqwest::Client::new().post(url.replace("https://", "http://")).body("{}").send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    assert_eq!(status_json(&env)["tenants"][0]["pending"], 2);

    // A world-readable key is refused by name.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = crate::billsync(&env, &["status"], None);
    assert!(crate::text(&out).contains("ingest.tls_key_file"), "{}", crate::text(&out));
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_backpressure_the_ingest_answers_503_and_healthz_degrades() {
    // Arrange: at most 3 pending events.
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    configure(&env, "[ingest]\nlisten = \"127.0.0.1:0\"\n", &[]);
    let cfg =
        std::fs::read_to_string(&env.config).unwrap().replacen("[storage]\n", "[storage]\nmax_pending_events = 3\n", 1);
    std::fs::write(&env.config, cfg).unwrap();
    // The platform refuses the token for now, so nothing is delivered meanwhile.
    env.platform.set_billing_access("app-acme", false).unwrap();
    let running = start(&env.config, &[]);
    let client = reqwest::Client::new();
    let url = running.url("acme");
    let (status, _, _) = post(&client, &url, None, "application/x-ndjson", events("bp", 3)).await;
    assert_eq!(status, 200);

    // Act
    let (status, headers, body) = post(&client, &url, None, "application/x-ndjson", events("more", 1)).await;

    // Assert: 503 with Retry-After, by name; nothing lost; /healthz and /metrics say so.
    assert_eq!((status, body["error"].as_str()), (503, Some("backpressure")), "{body}");
    assert_eq!(headers["retry-after"], "5");
    assert!(body["message"].as_str().unwrap().contains("max_pending_events is 3"), "{body}");
    let health: Value = client.get(format!("{}/healthz", running.ops)).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    let outbox = health["checks"].as_array().unwrap().iter().find(|c| c["name"] == "outbox").unwrap();
    assert_eq!(outbox["detail"], "pushing back: max_pending_events", "{health}");
    let gauge = metric(&client, &running, "billsync_backpressure{reason=\"max_pending_events\"}").await;
    assert_eq!(gauge, Some(1.0));
    let refused =
        metric(&client, &running, "billsync_ingest_events_total{tenant=\"acme\",result=\"backpressure\"}").await;
    assert_eq!(refused, Some(1.0));
    assert_eq!(status_json(&env)["tenants"][0]["pending"], 3);
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_is_cut_off_after_the_read_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Arrange: one second to send headers, and one more for the body.
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    configure(&env, "[ingest]\nlisten = \"127.0.0.1:0\"\nread_timeout_seconds = 1\n", &[]);
    let running = start(&env.config, &[]);
    let addr = running.ingest.trim_start_matches("http://").to_owned();

    // Act: one client stops inside its headers, another inside its body.
    let mut headers_only = tokio::net::TcpStream::connect(&addr).await.unwrap();
    headers_only.write_all(b"POST /v1/tenants/acme/events HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut half_body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = "POST /v1/tenants/acme/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n\
                Content-Length: 100\r\n\r\n{\"event_id\":";
    half_body.write_all(head.as_bytes()).await.unwrap();

    // Assert: the first is disconnected, the second told 408; neither is held for long.
    let within = Duration::from_secs(10);
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, headers_only.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a client stalled in its headers is still connected after {within:?}");
    let mut answer = vec![0; 4096];
    let n =
        tokio::time::timeout(within, half_body.read(&mut answer)).await.expect("no answer to a stalled body").unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    assert_eq!(status_json(&env)["tenants"][0]["pending"], 0);
    env.platform.shutdown().await;
}

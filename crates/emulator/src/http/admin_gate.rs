//! The gate in front of the admin API. In this order: the peer must be loopback (`403
//! forbidden`); the request must name a loopback `Host` or an allowed one (`403
//! host_not_allowed`), against DNS rebinding; and it must carry the per-run key in
//! `X-Admin-Key` (`401 admin_key_required`), against any other page or process that can reach
//! loopback. Refusals are logged at `warn`, never with the key.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::Response;

use super::reply::{St, error_body, json_reply};
use crate::access::AdminAccess;
use crate::server::Conn;

/// The header carrying the admin key.
const X_ADMIN_KEY: &str = "x-admin-key";

/// The middleware: passes the request on, or answers the first refusal.
pub(super) async fn admin_gate(State(st): State<St>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<Conn>().map(|c| c.peer.ip());
    match refusal(&st.admin, peer, req.uri(), req.headers()) {
        Some((status, error, description)) => {
            tracing::warn!(?peer, %status, error, path = %format_args!("/admin{}", req.uri().path()), "admin request refused");
            json_reply(status, &error_body(error, Some(description)))
        }
        None => next.run(req).await,
    }
}

/// The first rule the request breaks: status, error code and description.
fn refusal(
    access: &AdminAccess,
    peer: Option<IpAddr>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<(StatusCode, &'static str, &'static str)> {
    if !loopback_peer(peer) {
        return Some((StatusCode::FORBIDDEN, "forbidden", "the admin API answers loopback peers only"));
    }
    if !host_allowed(access, uri, headers) {
        return Some((
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            "the admin API answers requests whose Host is localhost, 127.0.0.1, [::1] or a name given with --allow-host",
        ));
    }
    let key = headers.get(X_ADMIN_KEY).map(|v| v.as_bytes());
    if !key.is_some_and(|k| access.key_matches(k)) {
        return Some((
            StatusCode::UNAUTHORIZED,
            "admin_key_required",
            "the admin API needs the header X-Admin-Key with the admin key the emulator printed at start",
        ));
    }
    None
}

/// The admin API answers loopback peers only (IPv4-mapped IPv6 loopback included); a request
/// whose peer is unknown is refused.
fn loopback_peer(peer: Option<IpAddr>) -> bool {
    peer.is_some_and(|ip| ip.to_canonical().is_loopback())
}

/// Exactly one `Host` header, allowed; and an absolute-form target's authority, if any,
/// allowed too.
fn host_allowed(access: &AdminAccess, uri: &Uri, headers: &HeaderMap) -> bool {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_ok = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.to_str().is_ok_and(|h| access.host_allowed(h)),
        _ => false,
    };
    host_ok && uri.authority().is_none_or(|a| access.host_allowed(a.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmulatorConfig;
    use axum::http::HeaderValue;

    #[test]
    fn only_loopback_peers_reach_the_admin_api() {
        let allowed = |s: &str| loopback_peer(Some(s.parse().unwrap()));
        assert!(allowed("127.0.0.1") && allowed("127.8.9.1") && allowed("::1") && allowed("::ffff:127.0.0.1"));
        assert!(
            !allowed("192.0.2.2") && !allowed("10.0.0.1") && !allowed("::ffff:10.0.0.1") && !allowed("2001:db8::1")
        );
        assert!(!loopback_peer(None));
    }

    fn access() -> AdminAccess {
        let config = EmulatorConfig::default().admin_key("0123456789abcdef");
        AdminAccess::from_config(&config).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_checks_run_peer_then_host_then_key() {
        let (a, uri, lo) = (access(), Uri::from_static("/audit"), Some("127.0.0.1".parse().unwrap()));
        let code = |peer, uri: &Uri, h: &HeaderMap| refusal(&a, peer, uri, h).map(|r| r.1);
        let good = headers(&[("host", "localhost:1"), ("x-admin-key", "0123456789abcdef")]);
        assert_eq!(code(lo, &uri, &good), None);
        assert_eq!(code(Some("192.0.2.2".parse().unwrap()), &uri, &good), Some("forbidden"));
        assert_eq!(code(lo, &uri, &headers(&[("host", "evil.example")])), Some("host_not_allowed"));
        assert_eq!(code(lo, &uri, &headers(&[("x-admin-key", "0123456789abcdef")])), Some("host_not_allowed"));
        let two = headers(&[("host", "localhost"), ("host", "evil.example"), ("x-admin-key", "0123456789abcdef")]);
        assert_eq!(code(lo, &uri, &two), Some("host_not_allowed"));
        let absolute = Uri::from_static("http://evil.example/admin/audit");
        assert_eq!(code(lo, &absolute, &good), Some("host_not_allowed"));
        assert_eq!(code(lo, &uri, &headers(&[("host", "localhost")])), Some("admin_key_required"));
    }
}

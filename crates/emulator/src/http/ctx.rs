//! Who and what a request is about (for the audit log and the counters), the injected faults
//! around its processing, and the refusals every endpoint shares.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::reply::{X_APPLICATION, X_TENANT, error_body, header_str, json_reply, set_header, with_rate};
use crate::audit::{AuditDraft, Reason};
use crate::faults::Fired;
use crate::ratelimit::RateStatus;
use crate::server::Conn;
use crate::state::AppState;

/// Who and what a request is about, for the audit log and the counters.
pub(crate) struct Ctx<'a> {
    pub st: &'a AppState,
    pub endpoint: &'static str,
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub jti: Option<String>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(st: &'a AppState, endpoint: &'static str) -> Self {
        Self { st, endpoint, client_id: None, tenant_id: None, jti: None }
    }

    /// What the headers claim, until a verified token says better.
    pub(crate) fn with_headers(mut self, headers: &HeaderMap) -> Self {
        self.tenant_id = header_str(headers, X_TENANT).map(str::to_owned);
        self.client_id = header_str(headers, X_APPLICATION).map(str::to_owned);
        self
    }

    pub(crate) fn count(&self, status: u16, reasons: &[Reason]) {
        self.st.counters.update(|c| {
            *c.requests_by_status.entry(status).or_default() += 1;
            *c.requests_by_endpoint.entry(self.endpoint.to_owned()).or_default() += 1;
            for r in reasons {
                *c.rejections_by_reason.entry(*r).or_default() += 1;
            }
        });
    }

    fn audit(&self, status: u16, reasons: Vec<Reason>, detail: Option<String>) {
        self.st.audit.record(AuditDraft {
            endpoint: self.endpoint,
            status,
            reasons,
            client_id: self.client_id.clone(),
            tenant_id: self.tenant_id.clone(),
            jti: self.jti.clone(),
            detail,
        });
    }

    /// Records a refused request: one audit entry and the counters.
    pub(crate) fn reject(&self, status: StatusCode, reasons: Vec<Reason>, detail: impl Into<Option<String>>) {
        self.count(status.as_u16(), &reasons);
        self.audit(status.as_u16(), reasons, detail.into());
    }
}

/// Applies the faults that act before a request is processed: latency, then `503` or `429`.
pub(crate) async fn pre_faults(ctx: &Ctx<'_>, fired: &Fired) -> Option<Response> {
    if !fired.latency.is_zero() {
        tokio::time::sleep(fired.latency).await;
    }
    if fired.unavailable {
        ctx.reject(StatusCode::SERVICE_UNAVAILABLE, vec![Reason::InjectedUnavailable], Some("injected fault".into()));
        return Some(json_reply(StatusCode::SERVICE_UNAVAILABLE, &error_body("service_unavailable", None)));
    }
    if let Some(retry) = fired.rate_limited {
        ctx.reject(StatusCode::TOO_MANY_REQUESTS, vec![Reason::InjectedRateLimited], Some("injected fault".into()));
        let mut r = json_reply(StatusCode::TOO_MANY_REQUESTS, &error_body("rate_limited", None));
        set_header(&mut r, "retry-after", retry);
        return Some(r);
    }
    None
}

/// After a request was processed: drops the connection if a fault says so (never returns
/// then), otherwise hands the response back.
pub(crate) async fn post_faults(ctx: &Ctx<'_>, fired: &Fired, conn: Option<&Conn>, response: Response) -> Response {
    match conn {
        Some(conn) if fired.drop_connection => {
            let status = response.status().as_u16();
            ctx.st.counters.update(|c| *c.rejections_by_reason.entry(Reason::InjectedConnectionDrop).or_default() += 1);
            ctx.audit(
                0,
                vec![Reason::InjectedConnectionDrop],
                Some(format!("injected fault: connection dropped instead of answering {status}")),
            );
            drop(response);
            conn.drop_connection();
            std::future::pending::<Response>().await
        }
        _ => response,
    }
}

/// Most event ids an audit entry of forgotten events names.
const LOST_IDS_NAMED: usize = 20;

/// Records that a `lose_after_accept` fault forgot `lost` of the `accepted` events of a `202`:
/// one audit entry (status 202) naming them, and the reason's counter.
pub(crate) fn record_losses(ctx: &Ctx<'_>, lost: &[std::sync::Arc<str>], accepted: u64) {
    let named: Vec<&str> = lost.iter().take(LOST_IDS_NAMED).map(|id| &**id).collect();
    let more = lost.len() - named.len();
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    let detail = format!(
        "injected fault: {} of the {accepted} events accepted were forgotten: {}{more}",
        lost.len(),
        named.join(", ")
    );
    ctx.st.counters.update(|c| *c.rejections_by_reason.entry(Reason::InjectedLostAfterAccept).or_default() += 1);
    ctx.audit(StatusCode::ACCEPTED.as_u16(), vec![Reason::InjectedLostAfterAccept], Some(detail));
}

/// `400 invalid_request` with a description, recorded.
pub(crate) fn bad_request(ctx: &Ctx<'_>, description: &str, rate: RateStatus) -> Response {
    ctx.reject(StatusCode::BAD_REQUEST, vec![Reason::InvalidRequest], description.to_owned());
    with_rate(json_reply(StatusCode::BAD_REQUEST, &error_body("invalid_request", Some(description))), rate)
}

/// `413 payload_too_large`, recorded with what was too large.
pub(crate) fn too_large(ctx: &Ctx<'_>, detail: String, rate: RateStatus) -> Response {
    ctx.reject(StatusCode::PAYLOAD_TOO_LARGE, vec![Reason::PayloadTooLarge], detail);
    with_rate(json_reply(StatusCode::PAYLOAD_TOO_LARGE, &error_body("payload_too_large", None)), rate)
}

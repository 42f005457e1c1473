//! One batch on the wire: a slot in the tenant's window, billing headers, the post, and what
//! the domain's settle rule decides its answer means.

use std::time::Duration;

use billsync_domain::{
    Attempt, BatchBody, BillingRequestHeaders, BillingResponse, BlockCause, Decision, EncodedEvent, RetryCause,
    Settlement, Tenant, TenantName, settle,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Blocked, Engine, human, lock, sleep_or_stop};

/// What became of one batch.
pub(super) enum Step {
    /// Delivered (accepted or duplicate) and dead-lettered events of this batch.
    Settled(Settlement),
    /// Split the batch in two and send each half.
    Split,
    /// The lease's delivery stops here.
    Halt(Halt),
}

/// Why a lease's delivery stopped before its last batch.
pub(super) enum Halt {
    /// A configuration problem: stop this tenant.
    Block(Blocked),
    /// A transient failure: return the events and try again after a backoff. `unexpected`:
    /// the answer was outside the contract (`unexpected_response`).
    Retry { why: String, unexpected: bool },
    /// Shutdown was requested before the batch was sent.
    Stopped,
}

impl Halt {
    fn retry(why: impl ToString) -> Step {
        Step::Halt(Halt::Retry { why: why.to_string(), unexpected: false })
    }
}

impl Engine {
    /// Sends one batch and carries out what the settle rule decides of its answer: settle,
    /// split, renew the token and send again (once), wait as the platform asked and send
    /// again, back off, or block.
    pub(super) async fn send(&self, tenant: &Tenant, batch: &[EncodedEvent], stop: &CancellationToken) -> Step {
        let body = BatchBody::new(batch);
        let mut attempt = Attempt { token_renewed: false };
        loop {
            if !self.take_slot(tenant, stop).await {
                return Step::Halt(Halt::Stopped);
            }
            let headers = match self.inner.tokens.headers(tenant).await {
                Ok(h) => h,
                Err(e) if e.is_transient() => return Halt::retry(e),
                Err(e) => return Step::Halt(Halt::Block(Blocked::by_token(tenant, &e))),
            };
            let response = match self.post(tenant, &headers, &body).await {
                Ok(response) => response,
                Err(step) => return step,
            };
            match settle(response, batch, attempt) {
                Decision::Settle(settlement) => return Step::Settled(settlement),
                Decision::Split => return Step::Split,
                Decision::RenewTokenAndRetry => {
                    // Expired or revoked under us: a new token, the same batch, once.
                    self.inner.tokens.invalidate(tenant, &headers).await;
                    attempt.token_renewed = true;
                }
                // The server's own wait: the same batch goes again once it is over.
                Decision::Retry { wait: Some(wait), cause } => self.wait_as_asked(tenant, wait, &cause),
                Decision::Retry { wait: None, cause } => {
                    let unexpected = matches!(cause, RetryCause::Unexpected { .. });
                    return Step::Halt(Halt::Retry { why: cause.to_string(), unexpected });
                }
                Decision::Block(cause) => {
                    if matches!(cause, BlockCause::InsufficientClaims { .. }) {
                        // Never send this token again.
                        self.inner.tokens.invalidate(tenant, &headers).await;
                    }
                    return Step::Halt(Halt::Block(Blocked::by_platform(tenant, &cause, &headers)));
                }
            }
        }
    }

    /// Posts the batch and counts the request; a missing answer is a transient failure.
    async fn post(
        &self,
        tenant: &Tenant,
        headers: &BillingRequestHeaders,
        body: &BatchBody,
    ) -> Result<BillingResponse, Step> {
        let name = tenant.name().as_str();
        self.update(tenant.name(), |r| {
            r.requests += 1;
            r.token_expires_at = Some(headers.expires_at());
        });
        let started = Instant::now();
        let reply = self.inner.api.post_events(headers, body).await;
        let elapsed = started.elapsed();
        let reply = reply.map_err(|e| {
            self.inner.metrics.request(name, "error", elapsed);
            Halt::retry(e)
        })?;
        self.inner.metrics.request(name, status_label(&reply.response), elapsed);
        if let Some(rl) = reply.rate_limit.filter(|rl| rl.remaining == 0) {
            self.defer(tenant, rl.reset.min(self.inner.settings.max_server_wait));
        }
        Ok(reply.response)
    }

    /// The platform asked for a wait (`429` with `Retry-After`): the tenant's window is closed
    /// until it is over, and the tenant says why meanwhile.
    fn wait_as_asked(&self, tenant: &Tenant, wait: Duration, cause: &RetryCause) {
        let wait = wait.min(self.inner.settings.max_server_wait);
        self.update(tenant.name(), |r| {
            r.backing_off = Some(format!("{}: waiting {} as the platform asked", cause.code(), human(wait)));
        });
        self.defer(tenant, wait);
    }

    /// Takes a slot in the tenant's window, waiting for one; `false` when stopped meanwhile.
    async fn take_slot(&self, tenant: &Tenant, stop: &CancellationToken) -> bool {
        loop {
            let now = self.inner.origin.elapsed();
            let wait = match self.inner.limiters.get(tenant.name()) {
                Some(w) => match lock(w).try_send(now) {
                    Ok(()) => return true,
                    Err(wait) => wait,
                },
                None => return true,
            };
            self.inner.metrics.rate_limit_wait(tenant.name().as_str());
            if !sleep_or_stop(wait, stop).await {
                return false;
            }
        }
    }

    fn defer(&self, tenant: &Tenant, wait: Duration) {
        self.defer_requests(tenant.name(), wait);
    }

    /// No request of the tenant, delivery or read, before `wait` from now (the platform said
    /// so: `429` with `Retry-After`, or `X-RateLimit-Remaining: 0` until the reset).
    pub(crate) fn defer_requests(&self, tenant: &TenantName, wait: Duration) {
        if let Some(w) = self.inner.limiters.get(tenant) {
            lock(w).defer(self.inner.origin.elapsed(), wait.min(self.inner.settings.max_server_wait));
        }
    }

    /// Takes a slot for a read of the platform in the tenant's window, within the reads' share
    /// ([`super::SyncSettings::read_share`]), waiting for one; `false` when stopped meanwhile.
    pub(crate) async fn take_read_slot(&self, tenant: &TenantName, stop: &CancellationToken) -> bool {
        loop {
            let now = self.inner.origin.elapsed();
            let wait = match self.inner.limiters.get(tenant) {
                Some(w) => match lock(w).try_read(now) {
                    Ok(()) => return true,
                    Err(wait) => wait,
                },
                None => return true,
            };
            if !sleep_or_stop(wait, stop).await {
                return false;
            }
        }
    }
}

fn status_label(r: &BillingResponse) -> &'static str {
    match r {
        BillingResponse::Accepted(_) => "202",
        BillingResponse::MissingHeader { .. } | BillingResponse::InvalidRequest { .. } => "400",
        BillingResponse::InvalidToken | BillingResponse::InsufficientClaims { .. } => "401",
        BillingResponse::TenantNotAuthorized => "403",
        BillingResponse::PayloadTooLarge => "413",
        BillingResponse::RateLimited { .. } => "429",
        BillingResponse::ServerError { .. } => "5xx",
        BillingResponse::Unexpected { .. } => "other",
    }
}

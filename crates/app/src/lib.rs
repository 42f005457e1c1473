//! billsync: gets billing events from edge devices to an IoT cloud platform reliably, and
//! says exactly why when the platform says no.
//!
//! This crate is the library: the composition root and the delivery engine, with neither the
//! command line (the `billsync-cli` crate) nor the platform emulator in its dependencies.
//! [`Agent`] builds the adapters named by a configuration ([`config::Config`]) and drives the
//! [`engine::Engine`] over them; another Rust service embeds billsync through it, and the
//! `billsync` command is one such user. Its errors are `thiserror` enums ([`AgentError`],
//! [`config::ConfigError`]).
//!
//! # Example
//!
//! Deliver events to the platform emulator, in-process:
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use billsync::{Agent, config::Config};
//! use billsync_emulator::{Emulator, EmulatorConfig};
//!
//! let platform = Emulator::start(EmulatorConfig::builtin(), "127.0.0.1:0".parse()?).await?;
//! let dir = tempfile::tempdir()?;
//! let config = Config::parse(
//!     &format!(
//!         r#"
//!         [platform]
//!         base_url = "{}"
//!         [storage]
//!         url = "sqlite://{}/outbox.db"
//!         [[tenants]]
//!         name = "acme"
//!         tenant_id = "acme-prod-001"
//!         application_id = "app-acme"
//!         client_secret = "secret-acme"
//!         "#,
//!         platform.base_url(),
//!         dir.path().display()
//!     ),
//!     &dir.path().join("billsync.toml"),
//! )?;
//! let agent = Agent::builder().config(config).build().await?;
//!
//! let now = chrono::Utc::now();
//! let event = billsync_domain::BillingEvent::parse(
//!     &format!(
//!         r#"{{"event_id": "e-1", "device_id": "meter-0042", "meter": "energy.active",
//!             "quantity": "12.500", "unit": "kWh", "occurred_at": "{}"}}"#,
//!         now.to_rfc3339()
//!     ),
//!     now,
//! )?;
//! agent.enqueue("acme", &[event.encode()]).await?;
//! let reports = agent.sync_once().await;
//! assert_eq!(reports[0].accepted, 1);
//! assert_eq!(platform.stored_event_ids("acme-prod-001"), ["e-1"]);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod agent;
pub mod backpressure;
pub mod config;
pub mod engine;
pub mod health;
pub mod ingest;
pub mod jsonl;
pub mod metrics;
pub mod reconcile;

pub use agent::{Agent, AgentBuilder, AgentError, TenantStatus};
pub use billsync_auth::{
    AssertionAlgorithm, AssertionKey, Diagnosis, InspectError, Inspection, KeyError, inspect as inspect_token,
};

/// An error and each of its causes, joined with `: ` (the form logs and reports show, as
/// `anyhow`'s `{:#}` does): every adapter keeps its driver's error as a source.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_chain_shows_each_cause_once() {
        let driver = std::io::Error::other("disk I/O error");
        let e = billsync_domain::OutboxError::Storage(
            billsync_domain::StorageFailure::new("ack of 500 events of tenant acme").with_source(driver),
        );
        assert_eq!(super::error_chain(&e), "outbox storage failed: ack of 500 events of tenant acme: disk I/O error");
    }
}

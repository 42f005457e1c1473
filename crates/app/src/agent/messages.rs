//! Broker messages (the MQTT ingest): each is stored as events or quarantined, and only then
//! acknowledged; and the quarantine's commands.

use std::collections::BTreeMap;

use billsync_domain::{EncodedEvent, EventRules, QuarantineSelection, Quarantined, TenantName};
use serde::Serialize;

use super::{Agent, AgentError};
use crate::config::TopicTemplate;
use crate::ingest::read_message;

/// One message from a broker.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Its topic, which names the tenant.
    pub topic: &'a str,
    /// Its payload: one event as JSON, or several as JSON Lines.
    pub payload: &'a [u8],
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Its events are committed to the outbox (those already there counted as duplicates):
    /// acknowledge it.
    Stored {
        /// The tenant the topic names.
        tenant: TenantName,
        /// How many events it held.
        events: usize,
    },
    /// It is in the quarantine, with the reason: acknowledge it.
    Quarantined {
        /// The quarantine entry.
        id: i64,
        /// Why it could not be stored.
        reason: String,
    },
    /// Neither, for now (the outbox pushes back or cannot be written): do not acknowledge it,
    /// so that the broker keeps it; take it again later.
    Held {
        /// Why.
        reason: String,
        /// Whether it is the outbox pushing back (else a failure to write).
        backpressure: bool,
    },
}

impl Taken {
    /// Whether the message may be acknowledged now: it is stored or quarantined.
    pub fn settled(&self) -> bool {
        !matches!(self, Self::Held { .. })
    }
}

/// What a retry of one quarantine entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requeued {
    /// The entry.
    pub id: i64,
    /// `stored` (the entry is removed) or `quarantined` (it stays, with `reason`).
    pub result: &'static str,
    /// The events stored, when stored.
    pub events: usize,
    /// Why it stays, when it stays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One tenant's share of a run: each message's place and event count, and their events.
type Share = (Vec<(usize, usize)>, Vec<EncodedEvent>);

impl Agent {
    /// Takes a run of broker messages: each is read alone (a bad one does not refuse the
    /// others); the good ones' events are stored with one commit per tenant; the bad ones are
    /// quarantined. Returns what became of each, in order; acknowledge the settled ones only.
    pub async fn take_messages(&self, messages: &[Message<'_>]) -> Vec<Taken> {
        let template = self.topic_template();
        let now = self.clock.now();
        let rules = EventRules::default();
        let mut taken: Vec<Option<Taken>> = vec![None; messages.len()];
        let mut by_tenant: BTreeMap<TenantName, Share> = BTreeMap::new();
        for (i, m) in messages.iter().enumerate() {
            match self.read_one(&template, m, &rules, now) {
                Ok((tenant, events)) => {
                    let entry = by_tenant.entry(tenant).or_default();
                    entry.0.push((i, events.len()));
                    entry.1.extend(events);
                }
                Err(reason) => taken[i] = Some(self.quarantine_one(m, reason).await),
            }
        }
        for (tenant, (which, events)) in by_tenant {
            let outcome = if events.is_empty() { Ok(()) } else { self.ingest(&tenant, &events).await.map(|_| ()) };
            for (i, n) in which {
                taken[i] = Some(match &outcome {
                    Ok(()) => Taken::Stored { tenant: tenant.clone(), events: n },
                    Err(e) => {
                        Taken::Held { reason: e.to_string(), backpressure: matches!(e, AgentError::Backpressure(_)) }
                    }
                });
            }
        }
        taken
            .into_iter()
            .map(|t| t.unwrap_or(Taken::Held { reason: "not taken".into(), backpressure: false }))
            .collect()
    }

    /// The selected quarantine entries, oldest first.
    ///
    /// # Errors
    /// [`AgentError::Outbox`] when the outbox cannot be read.
    pub async fn quarantined(&self, which: &QuarantineSelection) -> Result<Vec<Quarantined>, AgentError> {
        Ok(self.quarantine.quarantined(which).await?)
    }

    /// Retries the selected quarantine entries by today's configuration (a tenant added, say):
    /// an entry whose events are now stored is removed; one still refused stays, with the new
    /// reason. A payload cut at 64 KiB cannot be retried.
    ///
    /// # Errors
    /// [`AgentError::Outbox`] when the outbox cannot be read or written;
    /// [`AgentError::Backpressure`] while it pushes back.
    pub async fn requeue_quarantined(&self, which: &QuarantineSelection) -> Result<Vec<Requeued>, AgentError> {
        let template = self.topic_template();
        let rules = EventRules::default();
        let mut done = Vec::new();
        for entry in self.quarantine.quarantined(which).await? {
            let read = if entry.truncated() {
                Err(format!(
                    "only the first {} of its {} bytes were kept; it cannot be retried",
                    entry.payload.len(),
                    entry.size
                ))
            } else {
                let m = Message { topic: &entry.topic, payload: &entry.payload };
                self.read_one(&template, &m, &rules, self.clock.now())
            };
            match read {
                Ok((tenant, events)) => {
                    if !events.is_empty() {
                        self.store(&tenant, &events, None).await?;
                    }
                    self.quarantine.purge_quarantined(&QuarantineSelection::Ids(vec![entry.id])).await?;
                    done.push(Requeued { id: entry.id, result: "stored", events: events.len(), reason: None });
                }
                Err(reason) => {
                    if reason != entry.reason {
                        self.quarantine.set_quarantine_reason(entry.id, &reason).await?;
                    }
                    done.push(Requeued { id: entry.id, result: "quarantined", events: 0, reason: Some(reason) });
                }
            }
        }
        Ok(done)
    }

    /// Removes the selected quarantine entries; says how many.
    ///
    /// # Errors
    /// [`AgentError::Outbox`] when the outbox cannot be written.
    pub async fn purge_quarantined(&self, which: &QuarantineSelection) -> Result<u64, AgentError> {
        Ok(self.quarantine.purge_quarantined(which).await?)
    }

    fn topic_template(&self) -> TopicTemplate {
        match &self.config.mqtt {
            Some(m) => m.topic.clone(),
            None => TopicTemplate::default(),
        }
    }

    /// The tenant and events of one message, or why it must be quarantined.
    fn read_one(
        &self,
        template: &TopicTemplate,
        m: &Message<'_>,
        rules: &EventRules,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(TenantName, Vec<EncodedEvent>), String> {
        let name = template
            .tenant_of(m.topic)
            .ok_or_else(|| format!("the topic {} is not of the form {template}", m.topic))?;
        let tenant = self.tenant_name(name).map_err(|e| e.to_string())?;
        let events = read_message(m.payload, rules, now).map_err(|r| r.describe())?;
        Ok((tenant, events))
    }

    async fn quarantine_one(&self, m: &Message<'_>, reason: String) -> Taken {
        match self.quarantine.quarantine(m.topic, m.payload, &reason).await {
            Ok(id) => {
                tracing::warn!(topic = m.topic, id, %reason, bytes = m.payload.len(), "message quarantined");
                self.metrics.quarantined();
                Taken::Quarantined { id, reason }
            }
            Err(e) => Taken::Held { reason: format!("cannot quarantine it: {e}"), backpressure: false },
        }
    }
}

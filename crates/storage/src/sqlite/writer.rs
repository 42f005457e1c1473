//! The writer: one task owns the connection that writes, gathers what callers have queued into
//! a group, runs it in one transaction and commits once (see the parent module's docs).

use super::*;

/// One write, as the writer runs it (owned, so it can be run again after a failed group).
#[derive(Debug)]
pub(super) enum Op {
    /// `facts`: the events' ledger records, by position (read by the caller, off the writer).
    Enqueue {
        tenant: TenantName,
        events: Vec<EncodedEvent>,
        facts: Vec<Option<LedgerFact>>,
    },
    /// `generation`: the claim it is taken under ([`Outbox::lease_claimed`]), if any.
    Lease {
        tenant: TenantName,
        max: i64,
        lease_ms: i64,
        generation: Option<u64>,
    },
    /// `generation`, here and in the other settles: the lease's ([`Lease::generation`]).
    Ack {
        tenant: String,
        lease: String,
        ids: Vec<String>,
        generation: Option<u64>,
    },
    Nack {
        tenant: String,
        lease: String,
        retry_at: i64,
        generation: Option<u64>,
    },
    DeadLetter {
        tenant: String,
        lease: String,
        items: Vec<DeadLetter>,
        generation: Option<u64>,
    },
    Requeue {
        tenant: String,
        ids: Option<Vec<String>>,
    },
    CompactChunk {
        before: i64,
    },
    /// This process just took the tenant's OS lock: record the holder, count a new
    /// generation, and void every lease of the earlier holders.
    Claim {
        tenant: String,
        agent: String,
    },
    Release {
        tenant: String,
        agent: String,
    },
    SaveState {
        tenant: String,
        state: String,
    },
    /// A new reconciliation run over `[start, end)` (ms), and the end of runs older than a day.
    BeginReconcile {
        run: String,
        tenant: String,
        start: i64,
        end: i64,
    },
    /// Platform events into a run's scratch set (those outside its window are dropped).
    AddHeld {
        run: String,
        rows: Vec<HeldRow>,
    },
    EndReconcile {
        run: String,
    },
    /// Delivered events back to pending, due now, under a claim.
    RequeueDelivered {
        tenant: String,
        ids: Vec<String>,
        generation: u64,
    },
    /// Pending (or leased) events settled as delivered, under a claim.
    SettleHeld {
        tenant: String,
        ids: Vec<String>,
        generation: u64,
    },
    /// The facts' retention: the horizon moved to `before` (ms, never back), then a chunk of
    /// the facts of events that occurred before it dropped.
    TrimFactsChunk {
        before: i64,
    },
    /// A tenant's last reconciliation (JSON), replacing the one before.
    SaveLastReconcile {
        tenant: String,
        result: String,
    },
    /// A broker message into the quarantine, unless the same one is there (then its id).
    Quarantine {
        entry: NewEntry,
    },
    SetQuarantineReason {
        id: i64,
        reason: String,
    },
    /// `ids`: the entries to remove, `None` for all of them.
    PurgeQuarantined {
        ids: Option<Vec<i64>>,
    },
}

/// What the operation does, as the `what` of its failures ("ack of 500 events of tenant acme").
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Enqueue { tenant, events, .. } => write!(f, "enqueue of {} events for tenant {tenant}", events.len()),
            Op::Lease { tenant, max, .. } => write!(f, "lease of up to {max} events of tenant {tenant}"),
            Op::Ack { tenant, ids, .. } => write!(f, "ack of {} events of tenant {tenant}", ids.len()),
            Op::Nack { tenant, lease, .. } => write!(f, "nack of lease {lease} of tenant {tenant}"),
            Op::DeadLetter { tenant, items, .. } => {
                write!(f, "dead letter of {} events of tenant {tenant}", items.len())
            }
            Op::Requeue { tenant, .. } => write!(f, "requeue of dead letters of tenant {tenant}"),
            Op::CompactChunk { .. } => f.write_str("compaction of delivered events"),
            Op::Claim { tenant, .. } => write!(f, "claim of tenant {tenant}"),
            Op::Release { tenant, .. } => write!(f, "release of tenant {tenant}"),
            Op::SaveState { tenant, .. } => write!(f, "saving the state of tenant {tenant}"),
            Op::BeginReconcile { tenant, .. } => write!(f, "beginning a reconciliation of tenant {tenant}"),
            Op::AddHeld { run, rows } => write!(f, "adding {} platform events to reconciliation {run}", rows.len()),
            Op::EndReconcile { run } => write!(f, "ending reconciliation {run}"),
            Op::RequeueDelivered { tenant, ids, .. } => {
                write!(f, "requeue of {} delivered events of tenant {tenant}", ids.len())
            }
            Op::SettleHeld { tenant, ids, .. } => write!(f, "settling {} events of tenant {tenant}", ids.len()),
            Op::TrimFactsChunk { before } => write!(f, "dropping the facts of events that occurred before {before} ms"),
            Op::SaveLastReconcile { tenant, .. } => write!(f, "saving the last reconciliation of tenant {tenant}"),
            Op::Quarantine { entry } => write!(f, "quarantine of a message from topic {:?}", entry.topic),
            Op::SetQuarantineReason { id, .. } => write!(f, "setting the reason of quarantine entry {id}"),
            Op::PurgeQuarantined { ids: None } => f.write_str("purge of every quarantine entry"),
            Op::PurgeQuarantined { ids: Some(ids) } => write!(f, "purge of {} quarantine entries", ids.len()),
        }
    }
}

impl Op {
    /// Whether the operation may commit without an fsync of its own (WAL with
    /// `synchronous=NORMAL`: it survives the process being killed, and only a power loss or an
    /// OS crash before the next durable commit or checkpoint can undo it).
    ///
    /// Only the writes that carry information from outside are durable at once: an enqueue
    /// (the producer's events: losing one would lose billing data), a requeue, of dead
    /// letters or of delivered events the platform lacks (an operator's decision; undoing the
    /// latter would leave the platform without them), and a quarantine (the broker forgets the
    /// message once the ingest acknowledges it, right after). Undoing any other write only repeats
    /// work the platform absorbs: a lease or claim undone is one that expired; an ack, nack,
    /// dead letter or settle of held events undone puts its events back to pending, and the
    /// platform deduplicates on (tenant, event_id) forever (docs/platform.md section 3), so
    /// re-sending them is at-least-once delivery, as always; a reconciliation's scratch set
    /// undone fails its comparison (the run is unknown), or lacks rows that the next one adds;
    /// a chunk of the facts' retention undone brings back facts the horizon no longer vouches
    /// for, or the older horizon with them (each chunk moves it in its own transaction, so it is
    /// never behind a drop), and the next retention drops them again; a last reconciliation
    /// undone shows the one before it; a quarantine entry's new reason undone shows the one
    /// before it, and a purge undone brings back entries that the next purge removes.
    pub(super) fn relaxed(&self) -> bool {
        !matches!(self, Op::Enqueue { .. } | Op::Requeue { .. } | Op::RequeueDelivered { .. } | Op::Quarantine { .. })
    }

    /// The tenant and claim generation a lease or settle is fenced by: it writes only while
    /// that generation is the tenant's current one. `None` for every other operation, and for a
    /// lease or settle without a claim.
    pub(super) fn fence(&self) -> Option<(&str, u64)> {
        match self {
            Op::Lease { tenant, generation, .. } => generation.map(|g| (tenant.as_str(), g)),
            Op::Ack { tenant, generation, .. }
            | Op::Nack { tenant, generation, .. }
            | Op::DeadLetter { tenant, generation, .. } => generation.map(|g| (tenant.as_str(), g)),
            Op::RequeueDelivered { tenant, generation, .. } | Op::SettleHeld { tenant, generation, .. } => {
                Some((tenant.as_str(), *generation))
            }
            _ => None,
        }
    }

    pub(super) fn weight(&self) -> usize {
        match self {
            Op::Enqueue { events, .. } => events.len(),
            Op::AddHeld { rows, .. } => rows.len(),
            _ => 1,
        }
    }
}

/// A write's answer.
#[derive(Debug)]
pub(super) enum Out {
    Enqueued(EnqueueReport),
    Leased(Option<Lease>),
    Count(u64),
    Claimed(u64),
    /// A row's id (a quarantine entry's).
    Id(i64),
    Done,
    /// Refused: the lease or settle's generation (this one) is no longer the tenant's. Nothing
    /// was written, and the rest of the group commits.
    ClaimLost(u64),
}

pub(super) struct Request {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<Result<Out, OutboxError>>,
}

/// Copies the WAL back into the database after the writer commits, at most every
/// [`CHECKPOINT_EVERY`], without waiting for readers or the writer (`PASSIVE`).
pub(super) async fn checkpoint_loop(mut conn: SqliteConnection, mut wal_grown: mpsc::Receiver<()>) {
    while wal_grown.recv().await.is_some() {
        if let Err(e) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").await {
            tracing::warn!(error = %e, "outbox checkpoint failed; the writer's own will do");
        }
        tokio::time::sleep(CHECKPOINT_EVERY).await;
    }
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "closing the outbox checkpoint connection failed");
    }
}

pub(super) async fn writer_loop(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Request>,
    clock: Arc<dyn Clock>,
    wal_grew: mpsc::Sender<()>,
) {
    while let Some(first) = rx.recv().await {
        let mut weight = first.op.weight();
        let mut group = vec![first];
        let mut yields = 0;
        while group.len() < MAX_GROUP_OPS && weight < MAX_GROUP_EVENTS {
            match rx.try_recv() {
                Ok(next) => {
                    weight += next.op.weight();
                    group.push(next);
                }
                // Let callers that are about to send join this commit: a yield costs
                // microseconds, a commit an fsync.
                Err(_) if yields < GATHER_YIELDS => {
                    yields += 1;
                    tokio::task::yield_now().await;
                }
                Err(_) => break,
            }
        }
        let ops: Vec<&Op> = group.iter().map(|r| &r.op).collect();
        let results = run_group(&mut conn, &ops, to_ms(clock.now())).await;
        tracing::trace!(ops = ops.len(), events = weight, "outbox group committed");
        for (request, result) in group.into_iter().zip(results) {
            // A caller that stopped waiting no longer needs the answer.
            let _ = request.reply.send(result);
        }
        // Full means a checkpoint is already due.
        let _ = wal_grew.try_send(());
    }
    drop(wal_grew);
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "closing the outbox writer connection failed");
    }
}

/// Runs a group in one transaction; after any failure, each operation on its own.
pub(super) async fn run_group(conn: &mut SqliteConnection, ops: &[&Op], now: i64) -> Vec<Result<Out, OutboxError>> {
    match run_in_transaction(conn, ops, now).await {
        Ok(outs) => outs.into_iter().map(Ok).collect(),
        Err(e) if ops.len() == 1 => vec![Err(e.during(ops[0]))],
        Err(e) => {
            tracing::debug!(
                error = %Chain(&e),
                ops = ops.len(),
                "outbox group failed; running its operations one by one"
            );
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                results.push(run_in_transaction(conn, std::slice::from_ref(op), now).await.during(op).and_then(
                    |mut outs| {
                        outs.pop().ok_or_else(|| {
                            OutboxError::Storage(StorageFailure::new(format!("{op}: the outbox writer gave no answer")))
                        })
                    },
                ));
            }
            results
        }
    }
}

/// Boxed to give the future a `Send` bound the compiler can prove for any lifetime (a
/// known limitation with sqlx executors in spawned tasks).
pub(super) fn run_in_transaction<'a>(
    conn: &'a mut SqliteConnection,
    ops: &'a [&'a Op],
    now: i64,
) -> BoxFuture<'a, Result<Vec<Out>, StoreError>> {
    Box::pin(async move {
        // A group of relaxed writes only (see `Op::relaxed`) needs no fsync of its own: the
        // next durable commit or checkpoint syncs the WAL with it in it.
        let relaxed = ops.iter().all(|op| op.relaxed());
        if relaxed {
            conn.execute("PRAGMA synchronous = NORMAL").await?;
        }
        let mut result = match conn.execute("BEGIN IMMEDIATE").await {
            Ok(_) => match exec_all(conn, ops, now).await {
                Ok(outs) => conn.execute("COMMIT").await.map(|_| outs).map_err(StoreError::from),
                Err(e) => Err(e),
            },
            Err(e) => Err(e.into()),
        };
        if result.is_err() {
            // SQLite may already have rolled back (SQLITE_FULL can do that): then this fails
            // harmlessly.
            let _ = conn.execute("ROLLBACK").await;
        }
        if relaxed {
            // Every other commit stays durable: if this fails, so does the group (a lease
            // that is not returned expires; a claim that is not returned is retried).
            if let Err(e) = conn.execute("PRAGMA synchronous = FULL").await {
                result = Err(e.into());
            }
        }
        result
    })
}

/// Runs operations in order inside the open transaction; consecutive enqueues share one
/// insert, and the leases and settles fenced by a claim share one read of its generation.
pub(super) fn exec_all<'a>(
    conn: &'a mut SqliteConnection,
    ops: &'a [&'a Op],
    now: i64,
) -> BoxFuture<'a, Result<Vec<Out>, StoreError>> {
    Box::pin(async move {
        let mut outs = Vec::with_capacity(ops.len());
        let mut fences = Fences::default();
        let mut i = 0;
        while i < ops.len() {
            let run = ops[i..].iter().take_while(|op| matches!(op, Op::Enqueue { .. })).count();
            if run > 0 {
                let calls = ops[i..i + run].iter().filter_map(|op| match op {
                    Op::Enqueue { tenant, events, facts } => Some((tenant, &events[..], &facts[..])),
                    _ => None,
                });
                let plan = EnqueuePlan::new(calls);
                let inserted = insert_rows(conn, plan.rows(), now).await?;
                outs.extend(plan.reports(&inserted).into_iter().map(Out::Enqueued));
                i += run;
            } else {
                outs.push(exec_one(conn, &mut fences, ops[i], now).await?);
                i += 1;
            }
        }
        Ok(outs)
    })
}

//! The op log's compaction loop: keeps each active partition's log bounded.
//!
//! An operation leaves the log once it is older than `compact_after_ms` (a
//! retried client write finds its first result by operation id until then)
//! and every peer the partition still waits for has applied it
//! (`Group::compaction_floor`: peers heard from within `log_retention_ms`);
//! a standalone partition waits for no one. The objects keep every effect of
//! what is dropped, and the store keeps, per origin, how far the log was cut
//! (`log_floor`), so the version vector and the clock stay whole; a peer that
//! lacks something below the floor catches up from a snapshot instead
//! (`Group::catch_up_by_snapshot`). Tombstones are kept: a backup or a member
//! from before a destroy must find it.
use crate::appliance::Appliance;
use std::sync::Arc;
use std::time::Duration;

/// How often the loop looks at the partitions, at most.
const COMPACT_EVERY: Duration = Duration::from_secs(10);

pub async fn compact_logs(app: Arc<Appliance>) {
    let rules = app.config.replication.clone();
    let pause = COMPACT_EVERY.min(Duration::from_millis(rules.compact_after_ms));
    loop {
        tokio::time::sleep(pause).await;
        for p in app.active_partitions() {
            let upto = match crate::replication::group_of(&app, &p.name) {
                Some(g) => g.compaction_floor(&p),
                None => p.version_vector(),
            };
            let before = crate::now_ms().saturating_sub(rules.compact_after_ms);
            if let Err(e) = p.compact_log(&upto, before).await {
                tracing::warn!(partition = %p.name, error = %e, "could not compact the op log");
            }
        }
    }
}

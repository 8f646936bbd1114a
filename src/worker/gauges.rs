//! The gauges that need the database (the waiting rooms of open sales), read every few
//! seconds by this task so that a scrape of `/metrics` reads memory only: scrapes, however
//! many, take no connection from the reserved pool that admission, expiry and the health
//! check use.

use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::store::Store;

/// Reads the waiting rooms into the gauges every `every` until `shutdown`. A failed read
/// leaves the last values (and is logged).
pub async fn refresh_gauges(
    store: Store,
    metrics: Metrics,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    while !*shutdown.borrow() {
        match store.live_queues().await {
            Ok(queues) => {
                metrics.queue_waiting.reset();
                metrics.queue_active_holds.reset();
                for (sku, waiting, holds) in queues {
                    metrics
                        .queue_waiting
                        .with_label_values(&[&sku])
                        .set(waiting);
                    metrics
                        .queue_active_holds
                        .with_label_values(&[&sku])
                        .set(holds);
                }
            }
            Err(err) => tracing::warn!(error = %err, "metrics: could not read the queues"),
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
    Ok(())
}

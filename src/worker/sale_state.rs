//! The job that records a sale's state changes (active; ended by sell-out, time or cancel).
//!
//! It is queued at the sale's start and end, when the last unit sells and on cancel. It reads
//! the sale and records whatever has happened by then, each change once, so running it twice
//! or late is harmless. The public state never waits for it: it is derived on every read.

use anyhow::Context;

use super::JobHandler;
use crate::store::{Job, JobKind, Store};

/// Handles the jobs the service itself queues.
#[derive(Clone)]
pub struct SaleStateJobs {
    store: Store,
}

impl SaleStateJobs {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl JobHandler for SaleStateJobs {
    async fn run(&self, job: &Job) -> anyhow::Result<()> {
        match JobKind::parse(&job.kind) {
            Some(JobKind::SyncSaleState) => {
                let Some(sale_id) = job.sale_id else {
                    anyhow::bail!("sync_sale_state job {} has no sale", job.id);
                };
                let sale = self
                    .store
                    .record_state_changes(sale_id)
                    .await
                    .context("Failed to record the sale's state changes")?;
                if let Some(sale) = sale {
                    tracing::info!(sale = %sale.sku, state = sale.state().as_str(), "sale state recorded");
                }
                Ok(())
            }
            None => anyhow::bail!("unknown job kind {:?}", job.kind),
        }
    }
}

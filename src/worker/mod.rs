//! Background work: a job runner ([`Runner`], in `runner.rs`) that takes jobs from the
//! `jobs` table and runs them, and the webhook sender ([`WebhookSender`], in `webhooks.rs`)
//! that delivers the outbox.
//!
//! Every instance of the service runs one; correctness never depends on there being only one.
//! A claim (see [`Store::claim_jobs`]) commits at once, each job runs in a task of its own
//! outside any transaction, extending its own lease while it runs, and a failure is retried
//! with exponential backoff. Queue ticks have slots of their own, so admission never waits
//! behind another kind of job. The runner sleeps until the next job is due, a `NOTIFY` on
//! the jobs channel wakes it early (the store's one LISTEN loop, [`Store::listen`], which
//! also wakes it whenever it starts listening, so nothing queued before is left waiting),
//! and a poll interval bounds the sleep in case a notification is lost.
//!
//! The runner is supervised ([`supervise`]): if its loop dies (a bug), it is started again
//! (a job that panics ends only its own task). Its loop never waits for a job, and it beats
//! a [`RunnerHealth`] on every round so `/health` can tell a runner that stopped making
//! progress. Every few seconds it also runs the backstop of the waiting rooms
//! ([`Store::ensure_queue_ticks`]), makes sure a retention job is pending
//! ([`Store::ensure_prune_job`]) and counts the jobs that failed for good. The webhook sender
//! is supervised the same way, and so is the task that reads the waiting rooms into the
//! metrics ([`refresh_gauges`]).
//!
//! [`Store::claim_jobs`]: crate::store::Store::claim_jobs
//! [`Store::ensure_queue_ticks`]: crate::store::Store::ensure_queue_ticks
//! [`Store::ensure_prune_job`]: crate::store::Store::ensure_prune_job
//! [`Store::listen`]: crate::store::Store::listen

mod gauges;
mod runner;
mod service_jobs;
mod slots;
mod webhooks;

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

pub use gauges::refresh_gauges;
pub use runner::{JobHandler, Runner, RunnerConfig};
pub use service_jobs::{ADMIT_BATCH, PRUNE_SLICE, ServiceJobs};
pub use webhooks::{WebhookConfig, WebhookSender};

pub use crate::status::RunnerHealth;

/// How often the runner makes sure every live waiting room has a tick due and counts the
/// failed jobs: the longest a waiting room can go unticked after a lost tick.
pub const BACKSTOP_INTERVAL: Duration = Duration::from_secs(5);
/// Runs the background task `start` makes (the job runner, the webhook sender) until
/// `shutdown`, starting it again whenever it dies (a panic or an error): background work
/// must not stop for good because one round went wrong.
pub async fn supervise<F, Fut>(name: &'static str, start: F, shutdown: watch::Receiver<bool>)
where
    F: Fn(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    loop {
        let task = tokio::spawn(start(shutdown.clone()));
        match task.await {
            Ok(Ok(())) if *shutdown.borrow() => return,
            Ok(Ok(())) => {
                tracing::error!(task = name, "background task returned early; restarting it")
            }
            Ok(Err(err)) => tracing::error!(
                task = name,
                error = format!("{err:#}"),
                "background task failed; restarting it"
            ),
            Err(err) => {
                tracing::error!(task = name, error = %err, "background task died; restarting it")
            }
        }
        if *shutdown.borrow() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

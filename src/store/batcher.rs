//! Per-sale batchers for group commit: the requests for one sale that arrive while that
//! sale's previous batch is in the database are handed over together, to be decided by one
//! statement and one commit.
//!
//! Batching is natural, not timed: a batcher takes whatever has queued up while the last
//! batch ran (at most `max_batch`), so a lone request waits for nobody. Memory is bounded:
//! at most `max_waiting` requests wait per sale, and past that a caller is refused at once
//! ([`StoreError::Overloaded`]) instead of waiting in a line that only grows. A batcher
//! retires after [`IDLE_TIMEOUT`] without requests and starts again on demand.
//!
//! What a batch means, and how it is answered, is the decider's business: this module only
//! groups.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::StoreError;

/// A sale's batcher stops after this long without requests (and starts again on demand).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One batcher task per sale, each deciding its batches one after another.
pub(super) struct Batchers<R> {
    senders: Arc<Mutex<HashMap<Uuid, mpsc::Sender<R>>>>,
    max_batch: usize,
    max_waiting: usize,
}

impl<R> Clone for Batchers<R> {
    fn clone(&self) -> Self {
        Self {
            senders: self.senders.clone(),
            max_batch: self.max_batch,
            max_waiting: self.max_waiting,
        }
    }
}

impl<R: Send + 'static> Batchers<R> {
    /// Batchers of at most `max_batch` requests (in arrival order), with at most
    /// `max_waiting` requests waiting per sale.
    pub(super) fn new(max_batch: usize, max_waiting: usize) -> Self {
        Self {
            senders: Arc::default(),
            max_batch,
            max_waiting,
        }
    }

    /// Hands a request to its sale's batcher; refuses at once when the sale's line is full.
    /// A sale with no batcher running gets one, which hands each batch to the decider
    /// `start` makes (called only then).
    pub(super) fn send<D, Fut>(
        &self,
        sale_id: Uuid,
        request: R,
        start: impl Fn() -> D,
    ) -> Result<(), StoreError>
    where
        D: Fn(Uuid, Vec<R>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let request = match self.sender(sale_id, &start).try_send(request) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => return Err(StoreError::Overloaded),
            // The batcher retired between the lookup and the send: start a new one.
            Err(mpsc::error::TrySendError::Closed(request)) => request,
        };
        self.sender(sale_id, &start)
            .try_send(request)
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable(None),
            })
    }

    /// The sender of the sale's batcher, starting one if none runs.
    fn sender<D, Fut>(&self, sale_id: Uuid, start: &impl Fn() -> D) -> mpsc::Sender<R>
    where
        D: Fn(Uuid, Vec<R>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut senders = match self.senders.lock() {
            Ok(senders) => senders,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(sender) = senders.get(&sale_id)
            && !sender.is_closed()
        {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::channel(self.max_waiting);
        senders.insert(sale_id, sender.clone());
        tokio::spawn(self.clone().run(sale_id, receiver, start()));
        sender
    }

    async fn run<D, Fut>(self, sale_id: Uuid, mut receiver: mpsc::Receiver<R>, decide: D)
    where
        D: Fn(Uuid, Vec<R>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            let first = match tokio::time::timeout(IDLE_TIMEOUT, receiver.recv()).await {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(_) => {
                    // Idle: retire, then decide whatever slipped in meanwhile.
                    if let Ok(mut senders) = self.senders.lock() {
                        senders.remove(&sale_id);
                    }
                    receiver.close();
                    let mut rest = Vec::new();
                    while let Ok(request) = receiver.try_recv() {
                        rest.push(request);
                    }
                    for batch in batches(rest, self.max_batch) {
                        decide(sale_id, batch).await;
                    }
                    break;
                }
            };
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            decide(sale_id, batch).await;
        }
    }
}

/// `requests` cut into batches of at most `size`, in order.
fn batches<R>(requests: Vec<R>, size: usize) -> Vec<Vec<R>> {
    let mut out: Vec<Vec<R>> = Vec::new();
    for request in requests {
        match out.last_mut() {
            Some(last) if last.len() < size.max(1) => last.push(request),
            _ => out.push(vec![request]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_cut_into_batches_in_order() {
        let cut = batches((1..=5).collect(), 2);
        assert_eq!(cut, vec![vec![1, 2], vec![3, 4], vec![5]]);
        assert!(batches(Vec::<i32>::new(), 2).is_empty());
    }
}

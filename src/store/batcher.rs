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
//! groups, and carries each answer back ([`Reply`], [`Answer`]) with the one fact a caller
//! who stops waiting needs: whether its statement was sent.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
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

const WAITING: u8 = 0;
const SENT: u8 = 1;
const ABANDONED: u8 = 2;

/// The race between a request's statement and its caller's deadline, settled once: either
/// the decider marks it sent before the statement goes out, or the caller gives up first
/// and the decider leaves it out. So a caller told "nothing was written" is never written
/// for, and only a caller whose statement went out hears "outcome unknown".
#[derive(Clone, Default)]
struct Handoff(Arc<AtomicU8>);

/// The decider's end of one request: where its answer goes.
pub(super) struct Reply<T> {
    sender: oneshot::Sender<Result<T, StoreError>>,
    handoff: Handoff,
}

/// The caller's end of one request.
pub(super) struct Answer<T> {
    receiver: oneshot::Receiver<Result<T, StoreError>>,
    handoff: Handoff,
}

/// A request's two ends.
pub(super) fn reply_channel<T>() -> (Reply<T>, Answer<T>) {
    let (sender, receiver) = oneshot::channel();
    let handoff = Handoff::default();
    (
        Reply {
            sender,
            handoff: handoff.clone(),
        },
        Answer { receiver, handoff },
    )
}

impl<T> Reply<T> {
    /// Answers the caller (an `Err` back when they stopped waiting).
    pub(super) fn send(self, result: Result<T, StoreError>) -> Result<(), Result<T, StoreError>> {
        self.sender.send(result)
    }
}

impl<T> Answer<T> {
    /// The answer, waited for until `answer_by`. Past it, or when the decider dropped the
    /// request, the outcome is unknown only if the statement was sent; a request still in
    /// line is withdrawn and hears the plain, retry-safe [`StoreError::Unavailable`].
    pub(super) async fn wait_until(self, answer_by: Instant) -> Result<T, StoreError> {
        match tokio::time::timeout_at(answer_by, self.receiver).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) if self.handoff.abandon() => Err(StoreError::Unavailable(None)),
            Ok(Err(_)) | Err(_) => Err(StoreError::OutcomeUnknown),
        }
    }
}

impl Handoff {
    /// The decider, just before the statement: false when the caller already gave up.
    fn send(&self) -> bool {
        match self
            .0
            .compare_exchange(WAITING, SENT, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            // A retry of the batch sends it again: still sent.
            Err(state) => state == SENT,
        }
    }

    /// The caller, at its deadline: true when the statement was not sent and never will be.
    fn abandon(&self) -> bool {
        self.0
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Marks the requests of a batch sent, just before its statement goes out, and leaves out
/// those whose callers already gave up (and users left with none).
pub(super) fn claim<T>(by_user: &mut HashMap<String, Vec<Reply<T>>>) {
    by_user.retain(|_, replies| {
        replies.retain(|reply| reply.handoff.send());
        !replies.is_empty()
    });
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
    fn a_request_is_either_sent_or_abandoned_never_both() {
        let sent = Handoff::default();
        assert!(sent.send());
        assert!(sent.send(), "a retry of a sent request is still sent");
        assert!(!sent.abandon());
        let abandoned = Handoff::default();
        assert!(abandoned.abandon());
        assert!(!abandoned.send());
    }

    #[test]
    fn leftovers_are_cut_into_batches_in_order() {
        let cut = batches((1..=5).collect(), 2);
        assert_eq!(cut, vec![vec![1, 2], vec![3, 4], vec![5]]);
        assert!(batches(Vec::<i32>::new(), 2).is_empty());
    }
}

//! The drain of an instance that is shutting down: from the moment it starts, readiness
//! answers 503 (load balancers stop sending) and live streams end after one last message
//! (clients reconnect, with `Last-Event-ID`, to another instance), while requests in flight
//! finish.

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;

/// Starts the drain (held by whoever handles the shutdown signal).
pub struct DrainSwitch(watch::Sender<bool>);

impl DrainSwitch {
    pub fn start(&self) {
        self.0.send_replace(true);
    }
}

/// Whether, and when, the drain has started.
#[derive(Clone)]
pub struct Drain(watch::Receiver<bool>);

impl Drain {
    pub fn new() -> (DrainSwitch, Drain) {
        let (switch, drain) = watch::channel(false);
        (DrainSwitch(switch), Drain(drain))
    }

    /// A drain that never starts (the OpenAPI document, tests).
    pub fn never() -> Drain {
        Drain::new().1
    }

    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the drain has started; never, when its switch is gone unused.
    pub async fn started(&self) {
        let mut drain = self.0.clone();
        if drain.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// `inner` until the drain starts; then `closing(last message sent)`, when it gives one, and
/// the end. Nothing is cut: a message is either sent whole before the last one or not at
/// all (the client resumes from the last `id:` it received).
pub fn until_drain<T: Clone + Send + 'static>(
    inner: BoxStream<'static, T>,
    drain: Drain,
    closing: fn(T) -> Option<T>,
) -> BoxStream<'static, T> {
    stream::unfold(
        (inner, drain, None::<T>, false),
        move |(mut inner, drain, last, over)| async move {
            if over {
                return None;
            }
            tokio::select! {
                biased;
                () = drain.started() => {
                    let message = closing(last?)?;
                    Some((message, (inner, drain, None, true)))
                }
                item = inner.next() => {
                    let item = item?;
                    Some((item.clone(), (inner, drain, Some(item), false)))
                }
            }
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_ends_after_its_closing_message_once_the_drain_starts() {
        let (switch, drain) = Drain::new();
        let numbers = stream::iter([1, 2]).chain(stream::pending()).boxed();
        let mut out = until_drain(numbers, drain.clone(), |last| Some(last * 100));
        assert_eq!(out.next().await, Some(1));
        assert_eq!(out.next().await, Some(2));
        assert!(!drain.is_draining());
        switch.start();
        assert!(drain.is_draining());
        assert_eq!(out.next().await, Some(200));
        assert_eq!(out.next().await, None);
    }

    #[tokio::test]
    async fn a_drain_whose_switch_is_gone_never_starts() {
        let drain = Drain::never();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), drain.started());
        assert!(waited.await.is_err());
    }
}

//! The hub's ear: one `LISTEN` connection per instance on the sale-changes channel, each
//! notification waking that sale's refresher. The loop, its reconnects and its logging are
//! the store's one LISTEN loop ([`Store::listen`]).
//!
//! [`Store::listen`]: crate::store::Store::listen

use tokio::sync::watch;
use uuid::Uuid;

use super::{LiveHub, SALE_CHANGES_CHANNEL};
use crate::store::{Heard, Listen};

impl LiveHub {
    /// Listens for sale changes until `stop`. Losing the database does not end it: it
    /// tries again after a pause that grows from 1 s to 30 s (jittered), and logs the
    /// outage once and the recovery once. Meanwhile the streams still get every change
    /// from their own refresh, at most `refresh_every` late; once it listens again, every
    /// refresher is woken (what changed while nobody listened).
    pub async fn run_listener(self, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let listen = Listen {
            channel: SALE_CHANGES_CHANNEL,
            name: "live listener",
            meanwhile: "streams refresh on their own",
        };
        let store = self.inner.store.clone();
        store
            .listen(listen, stop, |heard| match heard {
                Heard::Notification(payload) => {
                    self.inner.metrics.live_notifications.inc();
                    if let Ok(sale_id) = Uuid::parse_str(payload) {
                        self.wake(sale_id);
                    }
                }
                Heard::Gap => self.wake_all(),
            })
            .await;
        Ok(())
    }
}

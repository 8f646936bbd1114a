//! Open streams per client: one client (an IP address, an IPv6 /64; see
//! `api::rate_limit::client_key`) holds at most `max_per_client` of an instance's streams,
//! so that nobody can take all of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The count of open streams per client.
#[derive(Debug)]
pub(super) struct ClientStreams {
    /// 0: no per-client cap.
    max_per_client: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open stream of a client, given back when dropped.
#[derive(Debug)]
pub(super) struct ClientSlot {
    clients: Arc<ClientStreams>,
    client: IpAddr,
}

impl ClientStreams {
    pub(super) fn new(max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_client,
            open: Mutex::default(),
        })
    }

    /// A slot for `client`, unless it already holds its share (`None`).
    pub(super) fn take(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(client).or_default();
        if self.max_per_client > 0 && *count >= self.max_per_client {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            clients: self.clone(),
            client,
        })
    }

    #[cfg(test)]
    fn open(&self, client: IpAddr) -> usize {
        let open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        open.get(&client).copied().unwrap_or(0)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .clients
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_share_and_gets_slots_back_when_streams_end() {
        let clients = ClientStreams::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = clients.take(a).expect("first");
        let _second = clients.take(a).expect("second");
        assert!(clients.take(a).is_none(), "a third is refused");
        assert!(clients.take(b).is_some(), "another client is not");
        drop(first);
        assert_eq!(clients.open(a), 1);
        assert!(clients.take(a).is_some(), "a slot came back");
    }

    #[test]
    fn zero_means_no_cap() {
        let clients = ClientStreams::new(0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..100).map(|_| clients.take(a).expect("slot")).collect();
        assert_eq!(clients.open(a), 100);
        drop(slots);
        assert_eq!(clients.open(a), 0);
    }
}

//! Test helpers for a database that goes away: a TCP route whose upstream can be switched
//! or cut, and the service's log captured for tests that check what it says.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A TCP route to Postgres whose upstream can be switched, like DNS or a load balancer
/// pointing somewhere else; it may also end every session in flight (a failover that
/// kills the old primary's connections).
pub struct Route {
    pub port: u16,
    upstream: Arc<AtomicU16>,
    sessions: Arc<Mutex<Vec<AbortHandle>>>,
    /// Connections accepted so far (attempts, whether or not the upstream answered).
    accepted: Arc<AtomicUsize>,
}

impl Route {
    pub async fn to(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let upstream = Arc::new(AtomicU16::new(upstream_port));
        let sessions: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (target, open, count) = (upstream.clone(), sessions.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let port = target.load(Ordering::SeqCst);
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let session = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                open.lock().expect("sessions").push(session.abort_handle());
            }
        });
        Self {
            port,
            upstream,
            sessions,
            accepted,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// New connections go to `port` from now on; with `end_sessions`, every open one is cut.
    pub fn switch(&self, port: u16, end_sessions: bool) {
        self.upstream.store(port, Ordering::SeqCst);
        if end_sessions {
            for session in self.sessions.lock().expect("sessions").drain(..) {
                session.abort();
            }
        }
    }
}

/// Everything logged at INFO and above, from every test of this binary while it runs (the
/// first caller installs the subscriber; each test finds its own lines by a sale id or a
/// span field of its own).
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = logs.clone();
        let installed = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        assert!(installed.is_ok(), "no other test installs a subscriber");
        logs
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A local port nobody listens on (a database that is gone).
pub fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

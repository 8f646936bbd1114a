//! Logging setup: tracing to stdout, human-readable or JSON, filtered by `RUST_LOG`; and a
//! throttle for failures that would otherwise log once per request while they last.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber (once; later calls are ignored, which suits tests).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: a container's or a file's log gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// At most one log line per period for a failure that can repeat on every request or every
/// second while it lasts (an outage, a read-only route): the first is logged, the rest of the
/// period is quiet. Usable as a `static`.
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    /// Milliseconds since the Unix epoch before which nothing more is logged.
    quiet_until: AtomicU64,
}

impl Throttle {
    pub const fn new(period: Duration) -> Self {
        Self {
            period,
            quiet_until: AtomicU64::new(0),
        }
    }

    /// Whether to log now (then the next `period` is quiet).
    pub fn ready(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let until = self.quiet_until.load(Ordering::Relaxed);
        now >= until
            && self
                .quiet_until
                .compare_exchange(
                    until,
                    now + self.period.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_through_per_period() {
        static ONCE: Throttle = Throttle::new(Duration::from_secs(3600));
        assert!(ONCE.ready());
        assert!(!ONCE.ready());
        assert!(!ONCE.ready());
        let open = Throttle::new(Duration::ZERO);
        assert!(open.ready() && open.ready());
    }
}

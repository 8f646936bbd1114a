//! The retry rule every retrying part of the service shares (failed jobs, webhook
//! deliveries, a lost LISTEN connection): a delay that doubles from a base up to a cap, and
//! the same with half of it random so that many retries spread out. No clock, no I/O.

use std::time::Duration;

/// The full delay before retry number `attempts` (1 after the first failure): `base`,
/// doubled with each further attempt, never more than `max`.
pub fn backoff(base: Duration, max: Duration, attempts: i32) -> Duration {
    let exponent = attempts.saturating_sub(1).clamp(0, 30) as u32;
    base.saturating_mul(2u32.saturating_pow(exponent)).min(max)
}

/// `delay` with its second half random (between half of it and all of it), so retries of
/// many failures started together do not all come back at once.
pub fn jittered(delay: Duration) -> Duration {
    delay / 2 + delay.mul_f64(fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_the_cap() {
        let (base, max) = (Duration::from_millis(500), Duration::from_secs(300));
        assert_eq!(backoff(base, max, 1), Duration::from_millis(500));
        assert_eq!(backoff(base, max, 2), Duration::from_secs(1));
        assert_eq!(backoff(base, max, 4), Duration::from_secs(4));
        assert_eq!(backoff(base, max, 30), Duration::from_secs(300));
        assert_eq!(backoff(base, max, i32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_the_cap() {
        for (attempts, full) in [(1, 1.0), (2, 2.0), (4, 8.0), (40, 3600.0)] {
            for _ in 0..50 {
                let delay = jittered(backoff(
                    Duration::from_secs(1),
                    Duration::from_secs(3600),
                    attempts,
                ))
                .as_secs_f64();
                assert!(
                    delay >= full / 2.0 && delay <= full,
                    "attempt {attempts}: {delay}"
                );
            }
        }
    }
}

//! Rate limits with governor: per user on the buyer write routes, per client IP on the API.
//!
//! governor's GCRA only advances on an allowed request, so refused requests do not eat into
//! a client's quota. A rate of 0 turns a limiter off. Idle keys are pruned periodically
//! (`retain_recent`) so the maps do not grow with every user ever seen.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use poem::http::StatusCode;
use poem::{Endpoint, IntoResponse, Request, Response};

use super::error::{ErrorBody, ErrorCode};

/// A keyed limiter, or none when its rate is 0.
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `per_second` requests per second with bursts of `burst` (at least 1); off when 0.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` when `key` may go ahead, else the whole seconds to wait (at least 1).
    pub fn check(&self, key: &K) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(key)
            .map_err(|not_until| retry_after_seconds(not_until.wait_time_from(self.clock.now())))
    }

    /// Forgets keys whose quota has fully recovered.
    pub fn prune(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// `Retry-After` is whole seconds: round up, and never tell a client to retry at once.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// The limiters of one service instance.
pub struct RateLimits {
    pub per_user: KeyedLimiter<String>,
    pub per_ip: KeyedLimiter<IpAddr>,
    /// Read the client IP from `X-Forwarded-For` (only behind a proxy that appends it).
    pub trust_forwarded_for: bool,
}

impl RateLimits {
    pub fn prune(&self) {
        self.per_user.prune();
        self.per_ip.prune();
    }
}

/// Prunes idle keys once a minute until the limiters are dropped.
pub fn spawn_pruner(limits: &Arc<RateLimits>) {
    let weak = Arc::downgrade(limits);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(limits) => limits.prune(),
                None => break,
            }
        }
    });
}

/// The client's IP: the last `X-Forwarded-For` entry when trusted (the one our proxy
/// appended; earlier entries are the client's own word), else the socket peer.
pub fn client_ip(req: &Request, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(ip) = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|part| part.trim().parse::<IpAddr>().ok())
            .next_back()
    {
        return Some(ip);
    }
    match req.remote_addr().0 {
        poem::Addr::SocketAddr(addr) => Some(addr.ip()),
        _ => None,
    }
}

/// The key a client is counted under: its IPv4 address, or the /64 of its IPv6 address (one
/// subscriber's network: a client must not escape a limit by rotating the addresses of its
/// own /64). An IPv4-mapped IPv6 address counts as its IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// The 429 response with its `Retry-After`.
pub fn too_many_requests(retry_after: u64) -> Response {
    ErrorBody::json(
        ErrorCode::RateLimited,
        format!("rate limit exceeded; retry after {retry_after} s"),
    )
    .with_status(StatusCode::TOO_MANY_REQUESTS)
    .with_header("Retry-After", retry_after)
    .into_response()
}

/// Applies the per-IP limit to every request under `/api/`. A request whose IP cannot be
/// told (a Unix socket peer) is let through rather than failed.
pub async fn per_ip_limit<E: Endpoint>(
    next: E,
    req: Request,
    limits: Arc<RateLimits>,
) -> poem::Result<Response> {
    if req.uri().path().starts_with("/api/")
        && let Some(ip) = client_ip(&req, limits.trust_forwarded_for)
        && let Err(retry_after) = limits.per_ip.check(&client_key(ip))
    {
        return Ok(too_many_requests(retry_after));
    }
    next.call(req).await.map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_ipv4_by_address() {
        let key = |ip: &str| client_key(ip.parse().expect("ip")).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn retry_after_is_whole_seconds_and_at_least_one() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), 3);
    }

    #[test]
    fn a_limiter_lets_the_burst_through_then_refuses_without_counting_refusals() {
        let limiter = KeyedLimiter::<String>::new(1, 3);
        let user = "u".to_string();
        for _ in 0..3 {
            assert_eq!(limiter.check(&user), Ok(()));
        }
        assert!(limiter.check(&user).is_err());
        assert!(limiter.check(&user).is_err());
        assert_eq!(
            limiter.check(&"other".to_string()),
            Ok(()),
            "keys are independent"
        );
    }

    #[test]
    fn a_rate_of_zero_turns_the_limiter_off() {
        let limiter = KeyedLimiter::<String>::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(limiter.check(&"u".to_string()), Ok(()));
        }
    }
}

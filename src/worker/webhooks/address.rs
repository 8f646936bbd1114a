//! Where a webhook may go: never inside the network the service runs in (loopback, private
//! ranges, link-local including the cloud metadata address 169.254.169.254, unique local
//! IPv6, ...), unless `WEBHOOK_ALLOWED_NETWORKS` lets a range in. A host name is resolved
//! at send time by [`GuardedResolver`], which hands the HTTP client only the addresses it
//! checked: the connection goes to an address that passed, so a name that resolves to a
//! public address for a check and to an internal one for the connection (DNS rebinding)
//! gets nowhere. An address written in the URL is checked before sending ([`check_url`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a delivery was not sent to an address (the category only: no network details reach
/// an admin through `lastError`).
#[derive(Debug, thiserror::Error)]
pub enum AddressRefused {
    #[error("the receiver's address is not allowed (internal network)")]
    Internal,
    #[error("could not resolve the receiver's host name")]
    Unresolved,
}

/// The ranges a webhook may reach despite being internal.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allowed.iter().any(|net| net.contains(&ip)) || !is_internal(ip)
    }
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Addresses that reach the service's own host or network, not the internet.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // Reserved for future use, 240.0.0.0/4.
        || a >= 240
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, old site-local fec0::/10.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
}

/// Refuses a URL whose host is an address outside the policy (a host name is checked when
/// it is resolved, by [`GuardedResolver`]).
pub fn check_url(url: &str, policy: &AddressPolicy) -> Result<(), AddressRefused> {
    let Ok(url) = reqwest::Url::parse(url) else {
        return Ok(());
    };
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    if policy.permits(ip) {
        Ok(())
    } else {
        Err(AddressRefused::Internal)
    }
}

/// The HTTP client's resolver: the system's, keeping only the addresses the policy permits.
pub struct GuardedResolver {
    pub policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            // Boxed by coercion, not `into()` (that would box the box, and `describe` could
            // no longer find the refusal in the error's chain).
            let refused =
                |why: AddressRefused| -> Box<dyn std::error::Error + Send + Sync> { Box::new(why) };
            let found = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map_err(|_| refused(AddressRefused::Unresolved))?;
            let permitted: Vec<SocketAddr> =
                found.filter(|addr| policy.permits(addr.ip())).collect();
            if permitted.is_empty() {
                return Err(refused(AddressRefused::Internal));
            }
            let addrs: Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_pass() {
        let policy = AddressPolicy::default();
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!policy.permits(ip(internal)), "{internal}");
        }
        for public in ["93.184.216.34", "172.32.0.1", "2606:4700::1111", "8.8.8.8"] {
            assert!(policy.permits(ip(public)), "{public}");
        }
    }

    #[test]
    fn allowed_networks_let_chosen_ranges_in() {
        let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().expect("net")]);
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(policy.permits(ip("::ffff:127.0.0.1")));
        assert!(!policy.permits(ip("10.0.0.1")));
    }

    #[test]
    fn an_address_in_the_url_is_checked_before_sending() {
        let policy = AddressPolicy::default();
        assert!(check_url("http://169.254.169.254/latest/meta-data", &policy).is_err());
        assert!(check_url("http://[::1]:8080/hook", &policy).is_err());
        assert!(check_url("https://example.com/hook", &policy).is_ok());
        assert!(check_url("https://93.184.216.34/hook", &policy).is_ok());
    }
}

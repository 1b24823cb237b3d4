//! Sign-in rate limits: attempts per account and per address, in memory (`governor`'s GCRA;
//! each server of a Redis cluster counts its own).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Sign-in attempts allowed per account per minute (a burst of this many, then one every
/// 60/N s), and per address.
pub const LOGINS_PER_ACCOUNT_PER_MINUTE: u32 = 10;
pub const LOGINS_PER_ADDRESS_PER_MINUTE: u32 = 30;

/// The sign-in rate limits of one server (`governor`'s GCRA, in memory: each server of a
/// Redis cluster counts its own attempts).
pub struct LoginLimits {
    accounts: DefaultKeyedRateLimiter<String>,
    addresses: DefaultKeyedRateLimiter<IpAddr>,
    /// Attempts since the maps were last pruned.
    since_pruned: AtomicU32,
}

impl Default for LoginLimits {
    fn default() -> Self {
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        LoginLimits {
            accounts: governor::RateLimiter::keyed(per_minute(LOGINS_PER_ACCOUNT_PER_MINUTE)),
            addresses: governor::RateLimiter::keyed(per_minute(LOGINS_PER_ADDRESS_PER_MINUTE)),
            since_pruned: Default::default(),
        }
    }
}

impl LoginLimits {
    /// Takes one attempt from the account's and the address's allowance; `Err(seconds)` until
    /// the next is allowed when either is spent. `account` is a valid user name (at most 63
    /// bytes), so the keys stay small; an IPv6 address counts by its /64, which one host
    /// usually holds whole.
    pub fn take(&self, account: Option<&str>, address: Option<IpAddr>) -> Result<(), u64> {
        let now = DefaultClock::default().now();
        let wait = |d: Duration| d.as_secs().max(1);
        if let Some(ip) = address.map(network) {
            self.addresses.check_key(&ip).map_err(|n| wait(n.wait_time_from(now)))?;
        }
        if let Some(account) = account {
            self.accounts.check_key(&account.to_owned()).map_err(|n| wait(n.wait_time_from(now)))?;
        }
        // Every 1,000 attempts, the keys that recovered their full allowance are dropped.
        if self.since_pruned.fetch_add(1, Ordering::Relaxed) >= 1_000 {
            self.since_pruned.store(0, Ordering::Relaxed);
            self.accounts.retain_recent();
            self.addresses.retain_recent();
        }
        Ok(())
    }
}

/// The key an address is limited by: itself (IPv4), or its /64 (IPv6).
fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_attempts_are_limited_per_account_and_per_address() {
        let limits = LoginLimits::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..LOGINS_PER_ACCOUNT_PER_MINUTE {
            limits.take(Some("alice"), Some(ip)).unwrap();
        }
        let wait = limits.take(Some("alice"), Some(ip)).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        limits.take(Some("bob"), Some(ip)).expect("another account from the same address");
        for i in 0..LOGINS_PER_ADDRESS_PER_MINUTE {
            let _ = limits.take(Some(&format!("user{i}")), Some(ip));
        }
        assert!(limits.take(Some("carol"), Some(ip)).is_err(), "the address's allowance is spent");
        limits.take(Some("carol"), Some("192.0.2.2".parse().unwrap())).expect("from elsewhere");
        // An IPv6 host counts by its /64: rotating the low bits does not buy more attempts.
        let v6 = |last: u16| Some(IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last)));
        for i in 0..LOGINS_PER_ADDRESS_PER_MINUTE {
            let _ = limits.take(None, v6(i as u16));
        }
        assert!(limits.take(None, v6(999)).is_err());
    }
}

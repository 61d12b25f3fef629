//! The address guard: which IP addresses the gatekeeper may connect to.
//!
//! interop-server's outbound connector resolves a name, checks **every** address with
//! [`AddressGuard::check_resolved`], and dials the checked address itself, so a DNS answer that
//! changes between check and connect (DNS rebinding) cannot reach a refused address. Every
//! outbound request of the gatekeeper goes through it: media proxy, discovery and JWKS, push.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{Error, Result};

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// `0.0.0.0/8` ("this network", includes `0.0.0.0`) or `::`.
    Unspecified,
    /// `127.0.0.0/8` or `::1`.
    Loopback,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// `169.254.0.0/16` (cloud metadata lives at 169.254.169.254) or `fe80::/10`.
    LinkLocal,
    /// RFC 6598 carrier-grade NAT: `100.64.0.0/10`.
    SharedAddressSpace,
    /// `fc00::/7`, and the deprecated site-local `fec0::/10`.
    UniqueLocal,
    /// NAT64 prefixes `64:ff9b::/96` and `64:ff9b:1::/48`: the gateway would reach an IPv4
    /// address we cannot see.
    Nat64,
    /// `224.0.0.0/4` or `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Documentation ranges: `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`.
    Documentation,
    /// Other special-purpose ranges: `192.0.0.0/24`, `198.18.0.0/15` (benchmarking),
    /// `240.0.0.0/4`, `100::/64` (discard), IPv4-compatible `::a.b.c.d` (deprecated), Teredo
    /// `2001::/32` (a tunnel to an address we cannot see).
    Reserved,
}

impl Refusal {
    /// A stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unspecified => "unspecified",
            Refusal::Loopback => "loopback",
            Refusal::Private => "private",
            Refusal::LinkLocal => "link-local",
            Refusal::SharedAddressSpace => "shared-address-space",
            Refusal::UniqueLocal => "unique-local",
            Refusal::Nat64 => "nat64",
            Refusal::Multicast => "multicast",
            Refusal::Broadcast => "broadcast",
            Refusal::Documentation => "documentation",
            Refusal::Reserved => "reserved",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies an address with no allow-list: `None` if it is a public unicast address the
/// gatekeeper may connect to, else why not. IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated
/// (`::ffff:0:a.b.c.d`) and 6to4 (`2002:ab:cd::/48`) addresses are judged by the IPv4 address
/// they carry.
pub fn classify(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Refusal> {
    let [a, b, c, _] = ip.octets();
    let r = match (a, b, c) {
        (0, _, _) => Refusal::Unspecified,
        (127, _, _) => Refusal::Loopback,
        (10, _, _) => Refusal::Private,
        (172, 16..=31, _) => Refusal::Private,
        (192, 168, _) => Refusal::Private,
        (169, 254, _) => Refusal::LinkLocal,
        (100, 64..=127, _) => Refusal::SharedAddressSpace,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Refusal::Documentation,
        (192, 0, 0) | (198, 18..=19, _) => Refusal::Reserved,
        (224..=239, _, _) => Refusal::Multicast,
        _ if ip == Ipv4Addr::BROADCAST => Refusal::Broadcast,
        (240..=255, _, _) => Refusal::Reserved,
        _ => return None,
    };
    Some(r)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Refusal> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if ip.is_unspecified() {
        return Some(Refusal::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Refusal::Loopback);
    }
    match s {
        // IPv4-mapped ::ffff:a.b.c.d
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => classify_v4(embedded(hi, lo)),
        // IPv4-translated ::ffff:0:a.b.c.d (RFC 2765)
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => classify_v4(embedded(hi, lo)),
        // IPv4-compatible ::a.b.c.d (deprecated by RFC 4291): refused whatever it carries, with
        // the embedded address's reason when it has one.
        [0, 0, 0, 0, 0, 0, hi, lo] => {
            Some(classify_v4(embedded(hi, lo)).unwrap_or(Refusal::Reserved))
        }
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 1, ..] => Some(Refusal::Nat64),
        [0x100, 0, 0, 0, ..] => Some(Refusal::Reserved),
        [0x2001, 0, ..] => Some(Refusal::Reserved),
        [0x2001, 0xdb8, ..] => Some(Refusal::Documentation),
        // 6to4 2002:AABB:CCDD::/48 carries AA.BB.CC.DD
        [0x2002, hi, lo, ..] => classify_v4(embedded(hi, lo)),
        [first, ..] if first & 0xfe00 == 0xfc00 => Some(Refusal::UniqueLocal),
        [first, ..] if first & 0xffc0 == 0xfec0 => Some(Refusal::UniqueLocal),
        [first, ..] if first & 0xffc0 == 0xfe80 => Some(Refusal::LinkLocal),
        [first, ..] if first & 0xff00 == 0xff00 => Some(Refusal::Multicast),
        _ => None,
    }
}

/// The same address in canonical form: IPv4-mapped IPv6 becomes the IPv4 address it maps, so
/// an allow-list entry `127.0.0.0/8` also covers `::ffff:127.0.0.1`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An address prefix (CIDR block) for the allow-list, e.g. `127.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// Builds a prefix; `len` must not exceed the address width (32 or 128).
    pub fn new(addr: IpAddr, len: u8) -> Result<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(Error::InvalidPrefix);
        }
        match (addr, canonical(addr)) {
            // `::ffff:a.b.c.d/len` with len >= 96 is the IPv4 prefix `a.b.c.d/(len - 96)`.
            (IpAddr::V6(_), v4 @ IpAddr::V4(_)) if len >= 96 => {
                Ok(IpPrefix { addr: v4, len: len - 96 })
            }
            (IpAddr::V6(_), IpAddr::V4(_)) => Err(Error::InvalidPrefix),
            _ => Ok(IpPrefix { addr, len }),
        }
    }

    /// Parses `address/length` (or a bare address, meaning a single host).
    pub fn parse(s: &str) -> Result<Self> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| Error::InvalidPrefix)?;
        let len = match len {
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse().map_err(|_| Error::InvalidPrefix)?
            }
            Some(_) => return Err(Error::InvalidPrefix),
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        IpPrefix::new(addr, len)
    }

    /// Whether `ip` lies in this prefix (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The verdict on one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A public unicast address.
    Allowed,
    /// A refused address that the dev/test allow-list lets through, with the reason it would
    /// otherwise be refused.
    AllowListed(Refusal),
    /// Refused, and why.
    Refused(Refusal),
}

impl Verdict {
    /// Whether the connection may go ahead.
    pub fn is_allowed(self) -> bool {
        !matches!(self, Verdict::Refused(_))
    }
}

/// The classifier plus an allow-list for development and tests (empty in production).
#[derive(Debug, Clone, Default)]
pub struct AddressGuard {
    allow: Vec<IpPrefix>,
}

impl AddressGuard {
    /// The production guard: no exceptions.
    pub fn strict() -> Self {
        AddressGuard::default()
    }

    /// A guard that lets the given prefixes through (dev mode: `127.0.0.0/8` and `::1/128`;
    /// tests: the test network's prefix). Multicast, broadcast and unspecified addresses stay
    /// refused whatever the list says: nothing can be served from them.
    pub fn with_allow_list(allow: impl IntoIterator<Item = IpPrefix>) -> Self {
        AddressGuard { allow: allow.into_iter().collect() }
    }

    /// The allow-list for `interop-server dev`: loopback only.
    pub fn dev() -> Self {
        AddressGuard::with_allow_list([
            IpPrefix { addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), len: 8 },
            IpPrefix { addr: IpAddr::V6(Ipv6Addr::LOCALHOST), len: 128 },
        ])
    }

    /// Judges one address.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        match classify(ip) {
            None => Verdict::Allowed,
            Some(r @ (Refusal::Unspecified | Refusal::Multicast | Refusal::Broadcast)) => {
                Verdict::Refused(r)
            }
            Some(r) if self.allow.iter().any(|p| p.contains(ip)) => Verdict::AllowListed(r),
            Some(r) => Verdict::Refused(r),
        }
    }

    /// Judges every address a name resolved to. The name is refused if **any** address is
    /// refused (a name that mixes public and private answers is the DNS-rebinding pattern) or
    /// if it resolved to nothing; otherwise the caller dials one of the returned addresses and
    /// no other.
    pub fn check_resolved(&self, addrs: &[IpAddr]) -> Result<()> {
        if addrs.is_empty() {
            return Err(Error::NoAddress);
        }
        for &ip in addrs {
            if let Verdict::Refused(r) = self.check(ip) {
                return Err(Error::AddressRefused(r));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Every range the issue names, its edges, and the embedded forms.
    #[test]
    fn refusal_matrix() {
        let cases: &[(&str, Refusal)] = &[
            ("0.0.0.0", Refusal::Unspecified),
            ("0.1.2.3", Refusal::Unspecified),
            ("::", Refusal::Unspecified),
            ("127.0.0.1", Refusal::Loopback),
            ("127.255.255.255", Refusal::Loopback),
            ("::1", Refusal::Loopback),
            ("10.0.0.0", Refusal::Private),
            ("10.255.255.255", Refusal::Private),
            ("172.16.0.0", Refusal::Private),
            ("172.31.255.255", Refusal::Private),
            ("192.168.0.1", Refusal::Private),
            ("192.168.255.255", Refusal::Private),
            ("169.254.0.1", Refusal::LinkLocal),
            ("169.254.169.254", Refusal::LinkLocal),
            ("fe80::1", Refusal::LinkLocal),
            ("febf:ffff::1", Refusal::LinkLocal),
            ("100.64.0.0", Refusal::SharedAddressSpace),
            ("100.127.255.255", Refusal::SharedAddressSpace),
            ("fc00::1", Refusal::UniqueLocal),
            ("fdff:ffff::1", Refusal::UniqueLocal),
            ("fec0::1", Refusal::UniqueLocal),
            ("64:ff9b::7f00:1", Refusal::Nat64),
            ("64:ff9b::808:808", Refusal::Nat64),
            ("64:ff9b:1::1", Refusal::Nat64),
            ("224.0.0.1", Refusal::Multicast),
            ("239.255.255.255", Refusal::Multicast),
            ("ff02::1", Refusal::Multicast),
            ("255.255.255.255", Refusal::Broadcast),
            ("240.0.0.1", Refusal::Reserved),
            ("192.0.0.8", Refusal::Reserved),
            ("198.18.0.1", Refusal::Reserved),
            ("100::1", Refusal::Reserved),
            ("2001::1", Refusal::Reserved),
            ("192.0.2.1", Refusal::Documentation),
            ("198.51.100.1", Refusal::Documentation),
            ("203.0.113.1", Refusal::Documentation),
            ("2001:db8::1", Refusal::Documentation),
            // IPv4-mapped forms
            ("::ffff:127.0.0.1", Refusal::Loopback),
            ("::ffff:10.1.2.3", Refusal::Private),
            ("::ffff:172.16.0.1", Refusal::Private),
            ("::ffff:192.168.1.1", Refusal::Private),
            ("::ffff:169.254.169.254", Refusal::LinkLocal),
            ("::ffff:100.64.0.1", Refusal::SharedAddressSpace),
            ("::ffff:0.0.0.0", Refusal::Unspecified),
            ("::ffff:224.0.0.1", Refusal::Multicast),
            // IPv4-translated forms
            ("::ffff:0:127.0.0.1", Refusal::Loopback),
            ("::ffff:0:10.0.0.1", Refusal::Private),
            // IPv4-compatible forms
            ("::127.0.0.1", Refusal::Loopback),
            ("::10.0.0.1", Refusal::Private),
            ("::169.254.169.254", Refusal::LinkLocal),
            ("::100.64.0.1", Refusal::SharedAddressSpace),
            ("::8.8.8.8", Refusal::Reserved),
            // 6to4 forms
            ("2002:7f00:1::1", Refusal::Loopback),
            ("2002:a00:1::", Refusal::Private),
            ("2002:a9fe:a9fe::1", Refusal::LinkLocal),
        ];
        let guard = AddressGuard::strict();
        for &(s, want) in cases {
            assert_eq!(classify(ip(s)), Some(want), "{s}");
            assert_eq!(guard.check(ip(s)), Verdict::Refused(want), "{s}");
        }
    }

    #[test]
    fn public_addresses_and_range_edges_are_allowed() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "169.253.255.255",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "64:ff9a::1",
            "fbff::1",
            "fe7f::1",
        ] {
            assert_eq!(classify(ip(s)), None, "{s}");
            assert_eq!(AddressGuard::strict().check(ip(s)), Verdict::Allowed, "{s}");
        }
    }

    #[test]
    fn allow_list_lets_through_only_its_prefixes() {
        let dev = AddressGuard::dev();
        assert_eq!(dev.check(ip("127.0.0.1")), Verdict::AllowListed(Refusal::Loopback));
        assert_eq!(dev.check(ip("::1")), Verdict::AllowListed(Refusal::Loopback));
        assert_eq!(dev.check(ip("::ffff:127.0.0.1")), Verdict::AllowListed(Refusal::Loopback));
        assert_eq!(dev.check(ip("10.0.0.1")), Verdict::Refused(Refusal::Private));
        assert_eq!(dev.check(ip("169.254.169.254")), Verdict::Refused(Refusal::LinkLocal));
        assert_eq!(dev.check(ip("8.8.8.8")), Verdict::Allowed);

        let test = AddressGuard::with_allow_list([IpPrefix::parse("10.200.0.0/16").unwrap()]);
        assert!(test.check(ip("10.200.3.4")).is_allowed());
        assert!(!test.check(ip("10.201.0.1")).is_allowed());
        // Never allow-listed: nothing is served from these.
        let all = AddressGuard::with_allow_list([
            IpPrefix::parse("0.0.0.0/0").unwrap(),
            IpPrefix::parse("::/0").unwrap(),
        ]);
        assert!(all.check(ip("10.0.0.1")).is_allowed());
        assert_eq!(all.check(ip("0.0.0.0")), Verdict::Refused(Refusal::Unspecified));
        assert_eq!(all.check(ip("ff02::1")), Verdict::Refused(Refusal::Multicast));
        assert_eq!(all.check(ip("255.255.255.255")), Verdict::Refused(Refusal::Broadcast));
    }

    #[test]
    fn a_name_is_refused_if_any_address_is() {
        let guard = AddressGuard::strict();
        // `localhost` resolving to loopback.
        assert!(matches!(
            guard.check_resolved(&[ip("127.0.0.1"), ip("::1")]),
            Err(Error::AddressRefused(Refusal::Loopback))
        ));
        // A rebinding-style answer mixing public and private addresses.
        assert!(matches!(
            guard.check_resolved(&[ip("8.8.8.8"), ip("192.168.1.1")]),
            Err(Error::AddressRefused(Refusal::Private))
        ));
        assert!(matches!(guard.check_resolved(&[]), Err(Error::NoAddress)));
        assert!(guard.check_resolved(&[ip("8.8.8.8"), ip("2606:4700::1111")]).is_ok());
        assert!(AddressGuard::dev().check_resolved(&[ip("127.0.0.1"), ip("::1")]).is_ok());
    }

    #[test]
    fn prefix_parsing() {
        assert!(IpPrefix::parse("10.0.0.0/8").unwrap().contains(ip("10.9.9.9")));
        assert!(IpPrefix::parse("1.2.3.4").unwrap().contains(ip("1.2.3.4")));
        assert!(!IpPrefix::parse("1.2.3.4").unwrap().contains(ip("1.2.3.5")));
        assert!(IpPrefix::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(!IpPrefix::parse("fd00::/8").unwrap().contains(ip("10.0.0.1")));
        // An IPv4-mapped prefix is the IPv4 prefix it maps.
        let mapped = IpPrefix::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped.contains(ip("10.1.2.3")) && mapped.contains(ip("::ffff:10.1.2.3")));
        assert!(!mapped.contains(ip("11.0.0.1")));
        assert!(IpPrefix::parse("::ffff:10.0.0.0/64").is_err());
        for bad in ["10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/+8", "x/8", "10.0.0.0/0008"] {
            assert!(IpPrefix::parse(bad).is_err(), "{bad}");
        }
    }
}

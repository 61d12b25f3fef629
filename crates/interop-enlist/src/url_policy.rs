//! Which URLs the gatekeeper may fetch (discovery, JWKS) and providers may be registered with.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// The rule for fetchable URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UrlPolicy {
    /// Production: `https` only, to a DNS name or a public IP address.
    #[default]
    HttpsOnly,
    /// Development (an explicit setting): `https` as above, plus plain `http` to loopback
    /// (`localhost`, 127.0.0.0/8, `::1`).
    DevLoopbackHttp,
}

/// Why a URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlProblem {
    /// Not an absolute URL.
    Unparsable,
    /// Not `https` (or `http` to loopback in dev mode).
    InsecureScheme,
    /// Carries user name or password, or a fragment.
    Credentials,
    /// A loopback, private, link-local or otherwise non-public address outside dev mode.
    NonPublicHost,
}

impl UrlPolicy {
    /// Checks `url` against the policy. The server must apply the same rule to the
    /// addresses a DNS name resolves to, and must not follow redirects to other URLs.
    pub fn check(self, url: &str) -> Result<Url, UrlProblem> {
        let u = Url::parse(url).map_err(|_| UrlProblem::Unparsable)?;
        if !u.username().is_empty() || u.password().is_some() || u.fragment().is_some() {
            return Err(UrlProblem::Credentials);
        }
        let host = u.host().ok_or(UrlProblem::Unparsable)?;
        let loopback = match &host {
            Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
            Host::Ipv4(a) => a.is_loopback(),
            Host::Ipv6(a) => a.is_loopback(),
        };
        match (u.scheme(), self) {
            ("https", _) => {}
            ("http", UrlPolicy::DevLoopbackHttp) if loopback => return Ok(u),
            _ => return Err(UrlProblem::InsecureScheme),
        }
        let public = match host {
            Host::Domain(d) => !d.eq_ignore_ascii_case("localhost"),
            Host::Ipv4(a) => public_v4(a),
            Host::Ipv6(a) => public_v6(a),
        };
        let dev_loopback = self == UrlPolicy::DevLoopbackHttp && loopback;
        if !(public || dev_loopback) {
            return Err(UrlProblem::NonPublicHost);
        }
        Ok(u)
    }
}

/// Whether an address is globally routable (the server uses the same rule on resolved
/// addresses).
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => public_v4(a),
        IpAddr::V6(a) => public_v6(a),
    }
}

fn public_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, ..] = a.octets();
    !(a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_documentation()
        || a.is_multicast()
        || o0 == 0
        || (o0 == 100 && (64..128).contains(&o1))
        || o0 >= 240)
}

fn public_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return public_v4(v4);
    }
    let s0 = a.segments()[0];
    !(a.is_loopback()
        || a.is_unspecified()
        || a.is_multicast()
        || (s0 & 0xfe00) == 0xfc00
        || (s0 & 0xffc0) == 0xfe80
        || s0 == 0x2001 && a.segments()[1] == 0x0db8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use UrlPolicy::*;
        use UrlProblem::*;
        let cases: &[(UrlPolicy, &str, Option<UrlProblem>)] = &[
            (HttpsOnly, "https://id.example.org/.well-known/openid-configuration", None),
            (HttpsOnly, "http://id.example.org/", Some(InsecureScheme)),
            (HttpsOnly, "http://127.0.0.1:8080/", Some(InsecureScheme)),
            (DevLoopbackHttp, "http://127.0.0.1:8080/jwks", None),
            (DevLoopbackHttp, "http://localhost:8080/jwks", None),
            (DevLoopbackHttp, "http://[::1]:8080/jwks", None),
            (DevLoopbackHttp, "http://10.0.0.1/jwks", Some(InsecureScheme)),
            (DevLoopbackHttp, "http://id.example.org/", Some(InsecureScheme)),
            (HttpsOnly, "https://127.0.0.1/", Some(NonPublicHost)),
            (HttpsOnly, "https://localhost/", Some(NonPublicHost)),
            (HttpsOnly, "https://10.1.2.3/", Some(NonPublicHost)),
            (HttpsOnly, "https://192.168.1.1/", Some(NonPublicHost)),
            (HttpsOnly, "https://169.254.169.254/latest", Some(NonPublicHost)),
            (HttpsOnly, "https://[fd00::1]/", Some(NonPublicHost)),
            (HttpsOnly, "https://[::ffff:127.0.0.1]/", Some(NonPublicHost)),
            (HttpsOnly, "https://user:pw@id.example.org/", Some(Credentials)),
            (HttpsOnly, "https://id.example.org/#frag", Some(Credentials)),
            (HttpsOnly, "ftp://id.example.org/", Some(InsecureScheme)),
            (HttpsOnly, "not a url", Some(Unparsable)),
        ];
        for (policy, url, want) in cases {
            assert_eq!(policy.check(url).err(), *want, "{policy:?} {url}");
        }
    }
}

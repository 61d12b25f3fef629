//! The one way the gatekeeper makes outbound HTTP requests (JWKS and discovery, push, media
//! proxy): every address a name resolves to is checked with interop-media's [`AddressGuard`],
//! and the HTTP client dials only the checked addresses (the guard runs inside the client's
//! resolver, so a DNS answer cannot change between check and connect). IP-literal hosts, which
//! skip the resolver, are checked before the request is built. Redirects are not followed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use interop_media::{AddressGuard, Verdict};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::{Error, Result};

/// Settings of the outbound client.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Which addresses may be dialled (strict in production; loopback allowed in dev).
    pub guard: AddressGuard,
    /// Whether plain `http://` URLs are allowed (dev mode only).
    pub allow_http: bool,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub timeout: Duration,
}

impl OutboundConfig {
    /// Production settings: public addresses over https only.
    pub fn strict() -> Self {
        Self {
            guard: AddressGuard::strict(),
            allow_http: false,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
        }
    }

    /// `interop-server dev` settings: loopback allowed, plain http allowed.
    pub fn dev() -> Self {
        Self { guard: AddressGuard::dev(), allow_http: true, ..Self::strict() }
    }
}

struct GuardedResolver {
    guard: AddressGuard,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
            guard
                .check_resolved(&ips)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let checked: Addrs = Box::new(addrs.into_iter());
            Ok(checked)
        })
    }
}

/// An HTTP client that only reaches addresses the guard allows.
#[derive(Debug, Clone)]
pub struct OutboundClient {
    client: reqwest::Client,
    guard: AddressGuard,
    allow_http: bool,
}

impl OutboundClient {
    /// Builds the client.
    pub fn new(config: &OutboundConfig) -> Result<Self> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { guard: config.guard.clone() }))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .https_only(!config.allow_http)
            .user_agent(concat!("interop-gatekeeper/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("building the HTTP client: {e}")))?;
        Ok(Self { client, guard: config.guard.clone(), allow_http: config.allow_http })
    }

    /// Checks a URL's scheme and, for an IP-literal host, its address.
    pub fn check_url(&self, url: &url::Url) -> Result<()> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err(Error::Refused("outbound URLs must be https")),
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(Error::Refused("outbound URL has no host")),
        };
        if let Some(ip) = ip
            && let Verdict::Refused(_) = self.guard.check(ip)
        {
            return Err(Error::Refused("outbound address is not allowed"));
        }
        Ok(())
    }

    /// A POST request to `url` after checking it.
    pub fn post(&self, url: &url::Url) -> Result<reqwest::RequestBuilder> {
        self.check_url(url)?;
        Ok(self.client.post(url.clone()))
    }

    /// A GET request to `url` after checking it.
    pub fn get(&self, url: &url::Url) -> Result<reqwest::RequestBuilder> {
        self.check_url(url)?;
        Ok(self.client.get(url.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        s.parse().unwrap()
    }

    #[test]
    fn literal_addresses_and_schemes_are_checked_before_any_request() {
        let strict = OutboundClient::new(&OutboundConfig::strict()).unwrap();
        for bad in [
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://[fd00::1]/x",
            "http://93.184.216.34/x",
            "ftp://93.184.216.34/x",
        ] {
            assert!(strict.check_url(&url(bad)).is_err(), "{bad} must be refused");
        }
        assert!(strict.check_url(&url("https://93.184.216.34/x")).is_ok());
        assert!(
            strict.check_url(&url("https://provider.example/x")).is_ok(),
            "names are checked at resolve time"
        );
        let dev = OutboundClient::new(&OutboundConfig::dev()).unwrap();
        assert!(dev.check_url(&url("http://127.0.0.1:8080/x")).is_ok());
        assert!(dev.check_url(&url("http://10.1.2.3/x")).is_err(), "dev allows loopback only");
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connect_time() {
        // `localhost` resolves to loopback: the strict client must not reach a live server there.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut config = OutboundConfig::strict();
        config.allow_http = true; // isolate the address check from the scheme check
        let strict = OutboundClient::new(&config).unwrap();
        let err = strict
            .get(&url(&format!("http://localhost:{port}/")))
            .unwrap()
            .send()
            .await
            .unwrap_err();
        assert!(err.is_connect() || err.is_request(), "{err:?}");
        // Nothing ever connected.
        let accepted = tokio::time::timeout(Duration::from_millis(0), listener.accept()).await;
        assert!(accepted.is_err());
    }
}

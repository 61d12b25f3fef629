//! Gatekeeper media proxy rules: which URL the proxy may fetch for a (provider, path) request,
//! and which redirects it may follow.
//!
//! The proxy never fetches a URL a client supplied. A client names a registered provider and a
//! [`MediaPath`]; the proxy builds the URL from that provider's registered media base URL with
//! [`proxy_url`], and the result always lies under that base: same scheme, host and port, and a
//! path that extends the base path.

use std::time::Duration;

use url::Url;

use crate::descriptor::MediaPath;
use crate::hosting::DEFAULT_MAX_FILE_LEN;
use crate::{Error, Result};

/// Which schemes a media base URL may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemePolicy {
    /// `https` only: every deployment outside dev mode.
    HttpsOnly,
    /// `https` or `http`: dev mode and tests only.
    AllowHttp,
}

/// Default total time budget for one proxied fetch.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(120);

/// Default number of same-base redirects the proxy follows.
pub const DEFAULT_MAX_REDIRECTS: u8 = 3;

/// Caps applied by the proxy to one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Largest encrypted file passed through, in bytes (upstream `Content-Length` checked first,
    /// then the streamed bytes counted with a [`ByteBudget`](crate::ByteBudget)).
    pub max_file_len: u64,
    /// Total time from the upstream connect to the last byte.
    pub timeout: Duration,
    /// Redirects followed (each must pass [`check_redirect`]).
    pub max_redirects: u8,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_file_len: DEFAULT_MAX_FILE_LEN,
            timeout: DEFAULT_PROXY_TIMEOUT,
            max_redirects: DEFAULT_MAX_REDIRECTS,
        }
    }
}

/// A registered provider's media base URL, checked: `https` (or `http` under
/// [`SchemePolicy::AllowHttp`]), a host, no user info, no query, no fragment, and a path ending
/// in `/` (one is appended if missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaBaseUrl(Url);

impl MediaBaseUrl {
    /// Checks a media base URL from the provider registry.
    pub fn parse(s: &str, policy: SchemePolicy) -> Result<Self> {
        let mut url = Url::parse(s).map_err(|_| Error::InvalidBaseUrl("not an absolute URL"))?;
        match (url.scheme(), policy) {
            ("https", _) | ("http", SchemePolicy::AllowHttp) => {}
            ("http", SchemePolicy::HttpsOnly) => {
                return Err(Error::InvalidBaseUrl("http is only allowed in dev mode"));
            }
            _ => return Err(Error::InvalidBaseUrl("scheme must be https")),
        }
        if url.host().is_none() {
            return Err(Error::InvalidBaseUrl("no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::InvalidBaseUrl("user info is not allowed"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::InvalidBaseUrl("query and fragment are not allowed"));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(MediaBaseUrl(url))
    }

    /// The base URL (ends in `/`).
    pub fn as_url(&self) -> &Url {
        &self.0
    }

    /// Whether `url` lies under this base: same scheme, host and port, no user info, query or
    /// fragment, and a path that is the base path followed by a valid [`MediaPath`].
    pub fn contains(&self, url: &Url) -> bool {
        let base = &self.0;
        url.scheme() == base.scheme()
            && url.host() == base.host()
            && url.port_or_known_default() == base.port_or_known_default()
            && url.username().is_empty()
            && url.password().is_none()
            && url.query().is_none()
            && url.fragment().is_none()
            && url
                .path()
                .strip_prefix(base.path())
                .is_some_and(|rest| MediaPath::parse(rest).is_ok())
    }
}

/// The URL the proxy fetches for `path` at the provider whose media base URL is `base`:
/// the base followed by the path. [`MediaPath`]'s grammar makes escaping the base impossible;
/// the result is checked again with [`MediaBaseUrl::contains`] all the same.
pub fn proxy_url(base: &MediaBaseUrl, path: &MediaPath) -> Result<Url> {
    let url = Url::parse(&format!("{}{}", base.0.as_str(), path.as_str()))
        .map_err(|_| Error::InvalidPath)?;
    if base.contains(&url) { Ok(url) } else { Err(Error::InvalidPath) }
}

/// Decides whether the proxy may follow a redirect from `current` (the URL it fetched, as built
/// by [`proxy_url`]) to the `Location` header value `location`, after `followed` earlier
/// redirects. The target must lie under the same media base URL ([`MediaBaseUrl::contains`]):
/// a redirect to another host, scheme or port, or outside the base path, is refused. The
/// connection to the target goes through the address guard like any other.
pub fn check_redirect(
    base: &MediaBaseUrl,
    current: &Url,
    location: &str,
    followed: u8,
    limits: &ProxyLimits,
) -> Result<Url> {
    if followed >= limits.max_redirects {
        return Err(Error::RedirectRefused);
    }
    let target = current.join(location).map_err(|_| Error::RedirectRefused)?;
    if base.contains(&target) { Ok(target) } else { Err(Error::RedirectRefused) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(s: &str) -> MediaBaseUrl {
        MediaBaseUrl::parse(s, SchemePolicy::HttpsOnly).unwrap()
    }

    #[test]
    fn base_url_rules() {
        assert_eq!(base("https://media.example/v1").as_url().as_str(), "https://media.example/v1/");
        assert_eq!(base("https://media.example").as_url().as_str(), "https://media.example/");
        assert!(MediaBaseUrl::parse("http://127.0.0.1:8080/m/", SchemePolicy::AllowHttp).is_ok());
        for bad in [
            "http://media.example/",
            "ftp://media.example/",
            "file:///etc/",
            "https://user:pw@media.example/",
            "https://media.example/?a=b",
            "https://media.example/#x",
            "media.example/",
            "/relative/",
            "data:text/plain,hi",
        ] {
            assert!(
                matches!(
                    MediaBaseUrl::parse(bad, SchemePolicy::HttpsOnly),
                    Err(Error::InvalidBaseUrl(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn proxy_url_stays_under_the_base() {
        let b = base("https://media.example:8443/v1/");
        let p = MediaPath::parse("ab/cd").unwrap();
        assert_eq!(proxy_url(&b, &p).unwrap().as_str(), "https://media.example:8443/v1/ab/cd");
        // Every escape attempt is stopped by the path grammar before a URL exists.
        for evil in [
            "../admin",
            "..%2fadmin",
            "%2e%2e/admin",
            ".%2e/admin",
            "/etc/passwd",
            "//evil.example/x",
            "@evil.example",
            "x?redirect=https://evil.example",
            "x#frag",
            "http://evil.example/",
            "\\\\evil.example\\x",
            "a/..",
        ] {
            assert!(MediaPath::parse(evil).is_err(), "{evil}");
        }
    }

    #[test]
    fn contains_checks_origin_and_path() {
        let b = base("https://media.example/v1/");
        let yes = ["https://media.example/v1/abc", "https://media.example:443/v1/a/b"];
        let no = [
            "http://media.example/v1/abc",
            "https://media.example:444/v1/abc",
            "https://evil.example/v1/abc",
            "https://media.example.evil.example/v1/abc",
            "https://media.example/v2/abc",
            "https://media.example/v1/",
            "https://media.example/v1abc",
            "https://u@media.example/v1/abc",
            "https://media.example/v1/abc?x=1",
            "https://media.example/v1/abc#f",
            "https://media.example/v1/a%2e%2e",
        ];
        for s in yes {
            assert!(b.contains(&Url::parse(s).unwrap()), "{s}");
        }
        for s in no {
            assert!(!b.contains(&Url::parse(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn redirects_stay_under_the_base() {
        let b = base("https://media.example/v1/");
        let current = proxy_url(&b, &MediaPath::parse("abc").unwrap()).unwrap();
        let limits = ProxyLimits::default();
        // Same base: followed (relative and absolute).
        assert_eq!(
            check_redirect(&b, &current, "def", 0, &limits).unwrap().as_str(),
            "https://media.example/v1/def"
        );
        assert_eq!(
            check_redirect(&b, &current, "https://media.example/v1/x/y", 2, &limits)
                .unwrap()
                .as_str(),
            "https://media.example/v1/x/y"
        );
        // Another host, including a private address, a scheme change, or leaving the base.
        for loc in [
            "http://10.0.0.1/v1/abc",
            "https://169.254.169.254/latest/meta-data/",
            "https://127.0.0.1/v1/abc",
            "http://media.example/v1/abc",
            "https://evil.example/v1/abc",
            "//evil.example/v1/abc",
            "/admin",
            "../admin",
            "%2e%2e/admin",
            "https://media.example/v1/abc?next=x",
            "https://media.example:8443/v1/abc",
        ] {
            assert!(
                matches!(
                    check_redirect(&b, &current, loc, 0, &limits),
                    Err(Error::RedirectRefused)
                ),
                "{loc:?}"
            );
        }
        // Too many hops.
        assert!(matches!(
            check_redirect(&b, &current, "def", limits.max_redirects, &limits),
            Err(Error::RedirectRefused)
        ));
    }
}

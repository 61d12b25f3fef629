//! Media over HTTP: a content-addressed host (a provider's media host, and the gatekeeper's own
//! for media its native users send) and the gatekeeper's media proxy for third-party media.
//!
//! ```text
//!  host:   PUT /media/<sha256 of the encrypted file>   (authorised; Content-Length required)
//!          GET /media/<sha256>                         (byte ranges)
//!  proxy:  GET /proxy/<integrator id>/<media path>     (authorised gatekeeper clients)
//!            └─▶ GET <that provider's registered media base URL><media path>
//! ```
//!
//! Uploads stream through interop-media's [`UploadVerifier`] into a temporary file that becomes
//! visible under its address only after the length and hash checked out; objects are immutable.
//! The proxy fetches only from the media base URL registered for the provider (never a URL the
//! client chose), through the [`OutboundClient`] (address guard, https outside dev mode),
//! follows only redirects that stay under that base, caps bytes while streaming and bounds the
//! whole fetch in time. Nothing is buffered beyond one chunk.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};
use interop_media::{
    ByteBudget, ContentAddress, HostLimits, MediaBaseUrl, MediaPath, ProxyLimits, RangeRequest,
    UploadVerifier, check_redirect, parse_range, proxy_url, unsatisfied_content_range,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::outbound::OutboundClient;
use crate::{Error, Result};

/// Decides whether a request may use a media endpoint (provider session, gatekeeper media
/// token, ...).
pub type Authorize =
    Arc<dyn Fn(HeaderMap) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Encrypted media files on disk, named by the SHA-256 of their bytes.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    limits: HostLimits,
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// A new object.
    Created,
    /// The object already existed (same bytes, by address); nothing was rewritten.
    Existed,
}

fn media_error(e: interop_media::Error) -> Error {
    Error::Media(e)
}

impl BlobStore {
    /// A store in `dir` (created if missing).
    pub fn open(dir: PathBuf, limits: HostLimits) -> Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(Self { dir, limits })
    }

    fn path(&self, address: &ContentAddress) -> PathBuf {
        let hex = address.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Stores an upload as it streams in. Refused before reading anything when the declared
    /// length is missing, too large, or impossible for an encrypted file; refused at the end
    /// when the bytes do not hash to `address`. Either way nothing becomes visible.
    pub async fn put<E>(
        &self,
        address: ContentAddress,
        content_length: Option<u64>,
        mut body: impl Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    ) -> Result<Put> {
        let mut verifier =
            UploadVerifier::new(address, content_length, &self.limits).map_err(media_error)?;
        let tmp =
            self.dir.join("tmp").join(format!("{}.{}", address.to_hex(), rand::random::<u64>()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|_| Error::Refused("the upload body failed"))?;
                verifier.update(&chunk).map_err(media_error)?;
                file.write_all(&chunk).await?;
            }
            verifier.finish().map_err(media_error)?;
            file.sync_all().await?;
            let dest = self.path(&address);
            if tokio::fs::try_exists(&dest).await? {
                return Ok(Put::Existed);
            }
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::rename(&tmp, &dest).await?;
            Ok(Put::Created)
        }
        .await;
        let _ = tokio::fs::remove_file(&tmp).await;
        result
    }

    /// Opens a stored object: the file and its length.
    pub async fn open_object(
        &self,
        address: &ContentAddress,
    ) -> Result<Option<(tokio::fs::File, u64)>> {
        match tokio::fs::File::open(self.path(address)).await {
            Ok(f) => {
                let len = f.metadata().await?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn status(code: StatusCode, error: &str) -> Response {
    (code, axum::Json(serde_json::json!({ "error": error }))).into_response()
}

fn refusal(e: &Error) -> Response {
    use interop_media::Error as M;
    match e {
        Error::Media(M::MissingLength) => status(StatusCode::LENGTH_REQUIRED, "length-required"),
        Error::Media(M::TooLarge) => status(StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
        Error::Media(M::TooLong | M::Truncated | M::InvalidUpload) => {
            status(StatusCode::BAD_REQUEST, "length-mismatch")
        }
        Error::Media(M::UploadHashMismatch) => {
            status(StatusCode::UNPROCESSABLE_ENTITY, "hash-mismatch")
        }
        Error::Media(M::InvalidContentAddress | M::InvalidPath) => {
            status(StatusCode::BAD_REQUEST, "invalid-address")
        }
        Error::Refused(_) => status(StatusCode::BAD_REQUEST, "upload-failed"),
        other => {
            tracing::warn!(error = %other, "media request failed");
            status(StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    }
}

#[derive(Clone)]
struct HostState {
    blobs: Arc<BlobStore>,
    authorize: Authorize,
}

/// The media host's routes (`PUT` and `GET /media/{address}`); uploads need `authorize`,
/// downloads are public (the bytes are encrypted and the address unguessable).
pub fn host_router(blobs: Arc<BlobStore>, authorize: Authorize) -> axum::Router {
    axum::Router::new()
        .route("/media/{address}", get(download).put(upload))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(HostState { blobs, authorize })
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

async fn upload(
    State(s): State<HostState>,
    Path(address): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !(s.authorize)(headers.clone()).await {
        return status(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let Ok(address) = ContentAddress::parse(&address) else {
        return status(StatusCode::BAD_REQUEST, "invalid-address");
    };
    match s.blobs.put(address, content_length(&headers), body.into_data_stream()).await {
        Ok(Put::Created) => StatusCode::CREATED.into_response(),
        Ok(Put::Existed) => StatusCode::OK.into_response(),
        Err(e) => refusal(&e),
    }
}

async fn download(
    State(s): State<HostState>,
    Path(address): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(address) = ContentAddress::parse(&address) else {
        return status(StatusCode::BAD_REQUEST, "invalid-address");
    };
    let (mut file, total) = match s.blobs.open_object(&address).await {
        Ok(Some(f)) => f,
        Ok(None) => return status(StatusCode::NOT_FOUND, "not-found"),
        Err(e) => return refusal(&e),
    };
    let range = parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), total);
    let (code, start, len, content_range) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, total, None),
        RangeRequest::Partial(r) => {
            (StatusCode::PARTIAL_CONTENT, r.start, r.len(), Some(r.content_range(total)))
        }
        RangeRequest::NotSatisfiable | RangeRequest::Invalid => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, unsatisfied_content_range(total))],
            )
                .into_response();
        }
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "internal");
    }
    let stream = tokio_util::io::ReaderStream::new(file.take(len));
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = code;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Some(cr) = content_range.and_then(|v| HeaderValue::from_str(&v).ok()) {
        h.insert(header::CONTENT_RANGE, cr);
    }
    response
}

/// The gatekeeper's media proxy.
#[derive(Debug)]
pub struct MediaProxy {
    client: OutboundClient,
    limits: ProxyLimits,
    /// Registered providers' media base URLs by integrator id.
    bases: RwLock<HashMap<String, MediaBaseUrl>>,
}

impl MediaProxy {
    /// A proxy using `client` for every upstream request.
    pub fn new(client: OutboundClient, limits: ProxyLimits) -> Self {
        Self { client, limits, bases: RwLock::default() }
    }

    /// Registers (or replaces) a provider's media base URL.
    pub fn set_provider(&self, integrator: &str, base: MediaBaseUrl) {
        self.bases
            .write()
            .expect("bases lock is never poisoned")
            .insert(integrator.to_owned(), base);
    }

    /// Forgets a provider (disabled or removed): its media is no longer proxied.
    pub fn remove_provider(&self, integrator: &str) {
        self.bases.write().expect("bases lock is never poisoned").remove(integrator);
    }

    /// Fetches `path` from the provider `integrator`, passing `range` on.
    async fn fetch(
        &self,
        integrator: &str,
        path: &str,
        range: Option<HeaderValue>,
    ) -> std::result::Result<Response, Response> {
        let base = self
            .bases
            .read()
            .expect("bases lock is never poisoned")
            .get(integrator)
            .cloned()
            .ok_or_else(|| status(StatusCode::NOT_FOUND, "unknown-provider"))?;
        let path =
            MediaPath::parse(path).map_err(|_| status(StatusCode::BAD_REQUEST, "invalid-path"))?;
        let mut url =
            proxy_url(&base, &path).map_err(|_| status(StatusCode::BAD_REQUEST, "invalid-path"))?;
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let mut followed = 0;
        let upstream = loop {
            let mut req = self
                .client
                .get(&url)
                .map_err(|_| status(StatusCode::BAD_GATEWAY, "upstream-refused"))?;
            if let Some(r) = &range {
                req = req.header(header::RANGE, r.clone());
            }
            let sent = tokio::time::timeout_at(deadline, req.send())
                .await
                .map_err(|_| status(StatusCode::GATEWAY_TIMEOUT, "upstream-timeout"))?
                .map_err(|_| status(StatusCode::BAD_GATEWAY, "upstream-failed"))?;
            if !sent.status().is_redirection() {
                break sent;
            }
            let location = sent
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| status(StatusCode::BAD_GATEWAY, "upstream-failed"))?;
            url = check_redirect(&base, &url, location, followed, &self.limits)
                .map_err(|_| status(StatusCode::BAD_GATEWAY, "redirect-refused"))?;
            followed += 1;
        };
        let code = upstream.status();
        if !(code == StatusCode::OK || code == StatusCode::PARTIAL_CONTENT) {
            let mapped =
                if code == StatusCode::NOT_FOUND || code == StatusCode::RANGE_NOT_SATISFIABLE {
                    code
                } else {
                    StatusCode::BAD_GATEWAY
                };
            return Err(status(mapped, "upstream-status"));
        }
        let mut budget = ByteBudget::new(self.limits.max_file_len);
        if let Some(len) = upstream.content_length() {
            budget.check_declared(len).map_err(|_| status(StatusCode::BAD_GATEWAY, "too-large"))?;
        }
        let mut out = Response::builder().status(code);
        for name in [header::CONTENT_LENGTH, header::CONTENT_RANGE, header::ACCEPT_RANGES] {
            if let Some(v) = upstream.headers().get(&name) {
                out = out.header(name, v.clone());
            }
        }
        out = out.header(header::CONTENT_TYPE, "application/octet-stream");
        // Stream through, counting bytes and bounding time; an overrun ends the body with an
        // error, which the client sees as a truncated (and so unverifiable) download.
        let stream = upstream.bytes_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            budget.consume(chunk.len()).map_err(|_| std::io::Error::other("media too large"))?;
            Ok::<_, std::io::Error>(chunk)
        });
        let stream = tokio_stream_deadline(stream, deadline);
        out.body(Body::from_stream(stream))
            .map_err(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "internal"))
    }
}

/// Ends `stream` with an error once `deadline` passes.
fn tokio_stream_deadline<S>(
    stream: S,
    deadline: tokio::time::Instant,
) -> impl Stream<Item = std::result::Result<Bytes, std::io::Error>>
where
    S: Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send,
{
    futures::stream::unfold((Box::pin(stream), false), move |(mut s, done)| async move {
        if done {
            return None;
        }
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(item)) => Some((item, (s, false))),
            Ok(None) => None,
            Err(_) => Some((Err(std::io::Error::other("media fetch took too long")), (s, true))),
        }
    })
}

#[derive(Clone)]
struct ProxyState {
    proxy: Arc<MediaProxy>,
    authorize: Authorize,
}

/// The proxy's route, `GET /proxy/{integrator}/{*path}`, for authorised clients.
pub fn proxy_router(proxy: Arc<MediaProxy>, authorize: Authorize) -> axum::Router {
    axum::Router::new()
        .route("/proxy/{integrator}/{*path}", get(proxied))
        .with_state(ProxyState { proxy, authorize })
}

async fn proxied(
    State(s): State<ProxyState>,
    Path((integrator, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !(s.authorize)(headers.clone()).await {
        return status(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    match s.proxy.fetch(&integrator, &path, headers.get(header::RANGE).cloned()).await {
        Ok(r) | Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::outbound::OutboundConfig;

    fn allow_all() -> Authorize {
        Arc::new(|h: HeaderMap| {
            let ok = h.get(header::AUTHORIZATION).is_some_and(|v| v == "Bearer ok");
            Box::pin(async move { ok })
        })
    }

    /// A plausible encrypted file: whole AES blocks plus the 10-byte MAC.
    fn blob(blocks: usize, seed: u8) -> (Vec<u8>, String) {
        let bytes: Vec<u8> =
            (0..blocks * 16 + 10).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        let hash = hex::encode(Sha256::digest(&bytes));
        (bytes, hash)
    }

    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        base
    }

    async fn host(max: u64) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(
            BlobStore::open(dir.path().join("media"), HostLimits { max_file_len: max }).unwrap(),
        );
        let redirect = axum::Router::new().route(
            "/elsewhere/{*p}",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "http://127.0.0.2:9/x")]) }),
        );
        (dir, serve(host_router(blobs, allow_all()).merge(redirect)).await)
    }

    #[tokio::test]
    async fn uploads_are_checked_immutable_and_served_with_ranges() {
        let (_d, base) = host(1 << 20).await;
        let http = reqwest::Client::new();
        let (bytes, hash) = blob(4, 1);
        let put = |h: &str, body: Vec<u8>, auth: &str| {
            http.put(format!("{base}/media/{h}")).header("authorization", auth).body(body).send()
        };
        assert_eq!(put(&hash, bytes.clone(), "Bearer no").await.unwrap().status(), 401);
        let (other, _) = blob(4, 2);
        let wrong = put(&hash, other, "Bearer ok").await.unwrap();
        assert_eq!(wrong.status(), 422, "bytes that do not hash to the address");
        assert_eq!(
            http.get(format!("{base}/media/{hash}")).send().await.unwrap().status(),
            404,
            "nothing visible"
        );
        assert_eq!(
            put(&hash, vec![0; 33], "Bearer ok").await.unwrap().status(),
            400,
            "not an encrypted length"
        );
        assert_eq!(put(&hash, bytes.clone(), "Bearer ok").await.unwrap().status(), 201);
        assert_eq!(
            put(&hash, bytes.clone(), "Bearer ok").await.unwrap().status(),
            200,
            "already there"
        );
        assert_eq!(put("not-hex", bytes.clone(), "Bearer ok").await.unwrap().status(), 400);

        let full = http.get(format!("{base}/media/{hash}")).send().await.unwrap();
        assert_eq!(full.status(), 200);
        assert_eq!(full.bytes().await.unwrap().to_vec(), bytes);
        let ranged =
            |r: &str| http.get(format!("{base}/media/{hash}")).header("range", r.to_owned()).send();
        let part = ranged("bytes=10-19").await.unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(
            part.headers()["content-range"],
            format!("bytes 10-19/{}", bytes.len()).as_str()
        );
        assert_eq!(part.bytes().await.unwrap().to_vec(), bytes[10..20].to_vec());
        let tail = ranged("bytes=-5").await.unwrap();
        assert_eq!(tail.bytes().await.unwrap().to_vec(), bytes[bytes.len() - 5..].to_vec());
        let past = ranged("bytes=9999-").await.unwrap();
        assert_eq!(past.status(), 416);
    }

    #[tokio::test]
    async fn oversized_uploads_are_refused_before_the_body() {
        let (_d, base) = host(100).await;
        let (bytes, hash) = blob(8, 1);
        let r = reqwest::Client::new()
            .put(format!("{base}/media/{hash}"))
            .header("authorization", "Bearer ok")
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
    }

    async fn proxy(config: OutboundConfig, limits: ProxyLimits, provider_base: &str) -> String {
        let proxy = Arc::new(MediaProxy::new(OutboundClient::new(&config).unwrap(), limits));
        let base =
            MediaBaseUrl::parse(provider_base, interop_media::SchemePolicy::AllowHttp).unwrap();
        proxy.set_provider("acme", base);
        serve(proxy_router(proxy, allow_all())).await
    }

    #[tokio::test]
    async fn the_proxy_fetches_only_from_the_registered_base() {
        let (_d, upstream) = host(1 << 20).await;
        let http = reqwest::Client::new();
        let (bytes, hash) = blob(64, 3);
        let r = http
            .put(format!("{upstream}/media/{hash}"))
            .header("authorization", "Bearer ok")
            .body(bytes.clone())
            .send()
            .await;
        assert_eq!(r.unwrap().status(), 201);
        let gk =
            proxy(OutboundConfig::dev(), ProxyLimits::default(), &format!("{upstream}/media/"))
                .await;
        let get = |path: &str| {
            http.get(format!("{gk}/proxy/{path}")).header("authorization", "Bearer ok").send()
        };

        let r = get(&format!("acme/{hash}")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().to_vec(), bytes, "streamed through unchanged");
        let r = http
            .get(format!("{gk}/proxy/acme/{hash}"))
            .header("authorization", "Bearer ok")
            .header("range", "bytes=0-15")
            .send()
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), r.bytes().await.unwrap().len()), (206, 16));
        assert_eq!(get("other/x").await.unwrap().status(), 404, "unknown provider");
        assert_eq!(get(&format!("acme/{}", "0".repeat(64))).await.unwrap().status(), 404);
        for escape in
            ["acme/..%2F..%2Fetc%2Fpasswd", "acme/%2e%2e/x", "acme/http:%2F%2Fevil.example%2F"]
        {
            let status = get(escape).await.unwrap().status().as_u16();
            assert!(status == 400 || status == 404, "{escape}: {status}");
        }
        assert_eq!(http.get(format!("{gk}/proxy/acme/{hash}")).send().await.unwrap().status(), 401);
    }

    #[tokio::test]
    async fn the_proxy_refuses_redirects_away_private_addresses_and_oversized_files() {
        let (_d, upstream) = host(1 << 20).await;
        let http = reqwest::Client::new();
        let (bytes, hash) = blob(64, 4);
        http.put(format!("{upstream}/media/{hash}"))
            .header("authorization", "Bearer ok")
            .body(bytes)
            .send()
            .await
            .unwrap();
        // A redirect to another host.
        let gk =
            proxy(OutboundConfig::dev(), ProxyLimits::default(), &format!("{upstream}/")).await;
        let r = http
            .get(format!("{gk}/proxy/acme/elsewhere/x"))
            .header("authorization", "Bearer ok")
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), r.text().await.unwrap().contains("redirect-refused")),
            (502, true)
        );
        // The production guard never reaches a loopback provider.
        let strict = OutboundConfig { allow_http: true, ..OutboundConfig::strict() };
        let gk = proxy(strict, ProxyLimits::default(), &format!("{upstream}/media/")).await;
        let r = http
            .get(format!("{gk}/proxy/acme/{hash}"))
            .header("authorization", "Bearer ok")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        // A file over the cap.
        let small = ProxyLimits { max_file_len: 100, ..ProxyLimits::default() };
        let gk = proxy(OutboundConfig::dev(), small, &format!("{upstream}/media/")).await;
        let r = http
            .get(format!("{gk}/proxy/acme/{hash}"))
            .header("authorization", "Bearer ok")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
    }

    /// The production guard through the proxy's HTTP interface: a provider whose media base
    /// names an address in any refused range is never dialled (the answer comes back at once as
    /// `upstream-refused`, with no connection attempt to wait for).
    #[tokio::test]
    async fn the_proxy_refuses_every_non_public_address_range() {
        let http = reqwest::Client::new();
        let strict = OutboundConfig { allow_http: true, ..OutboundConfig::strict() };
        for host in [
            "0.0.0.0",
            "127.0.0.1",
            "10.1.2.3",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "[::1]",
            "[::]",
            "[fe80::1]",
            "[fc00::1]",
            "[::ffff:127.0.0.1]",
            "[::ffff:10.0.0.1]",
            "[ff02::1]",
        ] {
            let gk =
                proxy(strict.clone(), ProxyLimits::default(), &format!("http://{host}/media/"))
                    .await;
            let r = http
                .get(format!("{gk}/proxy/acme/0123abcd"))
                .header("authorization", "Bearer ok")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_eq!(status, 502, "{host}: {body}");
            assert!(body.contains("upstream-refused"), "{host}: {body}");
        }
    }
}

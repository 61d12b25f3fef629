//! Media: encrypt a file, upload it to this user's media host, send the descriptor; and on
//! receipt fetch the encrypted file (third-party media through the gatekeeper's proxy),
//! verify and decrypt it (docs/PROTOCOL.md, section 6).
//!
//! Where a file is hosted is named by the descriptor's `provider`: a provider's integrator id,
//! or [`GATEKEEPER_HOST`] for the gatekeeper's own media host (its native users' files).
//! - upload: interop users to their provider (`PUT <provider>/media/<address>`, provider
//!   session), native users to the gatekeeper (`PUT <gatekeeper>/media/<address>`, a token from
//!   the `media` iq);
//! - download: the gatekeeper's own files straight from its host; a provider's files from that
//!   provider when it is the user's own, otherwise through the gatekeeper's proxy
//!   (`GET <gatekeeper>/proxy/<provider>/<path>`, media token).

use std::io::Write;
use std::path::Path;

use futures::StreamExt;
use interop_e2ee::proto;
use interop_e2ee::stanza::MessageType;
use interop_media::{ContentAddress, Encryptor, FileDigests, MediaKey, MediaType};
use interop_stanza::stanza::{Iq, IqPayload, IqType};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::{Client, Role, key};
use crate::{Error, Result};

/// The `provider` of files hosted by the gatekeeper itself.
pub const GATEKEEPER_HOST: &str = "gatekeeper";

/// Largest file the client sends (the reference hosts' cap is 1 GiB).
pub const MAX_FILE: u64 = 1 << 30;

/// Reports transfer progress: (bytes done, bytes in all).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// The media kind of a file, from its MIME type.
pub fn media_type_of(mime: &str) -> MediaType {
    match mime.split('/').next() {
        Some("image") => MediaType::Image,
        Some("video") => MediaType::Video,
        Some("audio") => MediaType::Audio,
        _ => MediaType::Document,
    }
}

/// A MIME type from a file name's extension (the common ones; otherwise
/// `application/octet-stream`).
pub fn mime_of(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("mp4") => "video/mp4",
        Some("ogg" | "opus") => "audio/ogg",
        Some("m4a") => "audio/mp4",
        Some("mp3") => "audio/mpeg",
        Some("pdf") => "application/pdf",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

fn wire_type(t: MediaType) -> proto::MediaType {
    match t {
        MediaType::Image => proto::MediaType::Image,
        MediaType::Video => proto::MediaType::Video,
        MediaType::Audio => proto::MediaType::Audio,
        _ => proto::MediaType::Document,
    }
}

fn http_err(e: reqwest::Error) -> Error {
    Error::Media(format!("media host unreachable: {}", e.without_url()))
}

impl Client {
    /// A media token and the gatekeeper's media base URL (`media` iq).
    async fn media_conn(&mut self) -> Result<(String, String)> {
        let id = self.fresh_id();
        let iq = Iq::new(id, IqType::Get, Some("media"), IqPayload::MediaUploadInfoRequest);
        let reply = self.iq(iq.into_node()).await?;
        let reply = Iq::from_node(reply).map_err(|_| Error::Protocol("malformed answer".into()))?;
        match reply.payload {
            IqPayload::MediaUploadInfo(info) => {
                let host = info
                    .hosts
                    .first()
                    .ok_or_else(|| Error::Media("the gatekeeper has no media host".into()))?;
                Ok((info.auth, host.hostname.trim_end_matches('/').to_owned()))
            }
            IqPayload::Error(e) => Err(Error::Refused(e.condition.as_str().to_owned())),
            _ => Err(Error::Protocol("unexpected answer to media".into())),
        }
    }

    /// Asks the gatekeeper's media proxy for `<integrator>/<path>` as given (probes and tests);
    /// returns the HTTP status and the error code of the answer, if any.
    pub async fn probe_proxy(&mut self, integrator: &str, path: &str) -> Result<(u16, String)> {
        let (token, base) = self.media_conn().await?;
        let response = self
            .http
            .get(format!("{base}/proxy/{integrator}/{path}"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(http_err)?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let code = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        Ok((status, code))
    }

    /// Encrypts `path`, uploads it to this user's media host and sends the descriptor to
    /// `to`. Returns the message id.
    pub async fn send_file(
        &mut self,
        to: &str,
        path: &Path,
        caption: &str,
        progress: Progress<'_>,
    ) -> Result<String> {
        let me = self.require_address().await?;
        let mime = mime_of(path);
        let media_type = media_type_of(mime);
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| Error::Local(format!("cannot read the file: {e}")))?
            .len();
        if size > MAX_FILE {
            return Err(Error::Local(format!(
                "the file is too large ({size} bytes; at most {MAX_FILE})"
            )));
        }
        // Encrypt into a temporary file next to the profile, streaming.
        let key = MediaKey::generate(&mut self.rng);
        let tmp = self.dir.join(format!("upload-{}.tmp", rand::random::<u64>()));
        let digests = encrypt_file(path, &tmp, &key, media_type).await?;
        let result = self.upload(&tmp, &digests, progress).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        let provider = result?;
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let media = proto::Media {
            media_key: key.as_bytes().to_vec().into(),
            file_sha256: digests.plaintext_sha256.to_vec().into(),
            encrypted_sha256: digests.encrypted_sha256.to_vec().into(),
            size: digests.plaintext_len,
            mime: mime.to_owned(),
            media_type: wire_type(media_type) as i32,
            provider,
            path: ContentAddress::from_sha256(digests.encrypted_sha256).to_hex(),
            caption: caption.to_owned(),
            file_name,
            ..Default::default()
        };
        let content = match media_type {
            MediaType::Image => proto::message::Content::Image(media),
            MediaType::Video => proto::message::Content::Video(media),
            MediaType::Audio => proto::message::Content::Voice(media),
            _ => proto::message::Content::File(media),
        };
        let message = proto::Message {
            id: interop_e2ee::new_message_id(&mut self.rng),
            timestamp_ms: crate::store::now_ms() as u64,
            content: Some(content),
            ..Default::default()
        };
        let _ = me;
        self.send_message(to, message, MessageType::Media).await
    }

    /// Uploads an encrypted file; returns the `provider` to write in the descriptor.
    async fn upload(
        &mut self,
        file: &Path,
        digests: &FileDigests,
        progress: Progress<'_>,
    ) -> Result<String> {
        let address = ContentAddress::from_sha256(digests.encrypted_sha256).to_hex();
        let len =
            digests.encrypted_len().ok_or_else(|| Error::Local("the file is too large".into()))?;
        let (url, bearer, provider) = match self.role().await? {
            Some(Role::Interop) => {
                let base = self
                    .setting(key::PROVIDER_URL)
                    .await?
                    .ok_or_else(|| Error::Local("not logged in to a provider".into()))?;
                let session = self
                    .setting(key::PROVIDER_SESSION)
                    .await?
                    .ok_or_else(|| Error::Local("not logged in to a provider".into()))?;
                let integrator = self.require_address().await?.integrator.ok_or_else(|| {
                    Error::Protocol("an interop address without integrator".into())
                })?;
                (format!("{base}/media/{address}"), session, integrator)
            }
            _ => {
                let (token, base) = self.media_conn().await?;
                (format!("{base}/media/{address}"), token, GATEKEEPER_HOST.to_owned())
            }
        };
        let f = tokio::fs::File::open(file).await?;
        let mut sent = 0u64;
        progress(0, len);
        let (tx, rx) = futures::channel::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
        let body = reqwest::Body::wrap_stream(rx);
        let request = self
            .http
            .put(&url)
            .bearer_auth(bearer)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .send();
        let feed = async {
            let mut f = f;
            let mut tx = tx;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                if futures::SinkExt::send(&mut tx, Ok(buf[..n].to_vec())).await.is_err() {
                    break;
                }
                sent += n as u64;
                progress(sent, len);
            }
            Ok::<(), std::io::Error>(())
        };
        let (response, fed) = tokio::join!(request, feed);
        fed?;
        let response = response.map_err(http_err)?;
        match response.status().as_u16() {
            200 | 201 => Ok(provider),
            401 => Err(Error::Media("the media host refused the upload: not authorised".into())),
            413 => Err(Error::Media("the media host refused the upload: file too large".into())),
            s => Err(Error::Media(format!("the media host refused the upload (HTTP {s})"))),
        }
    }

    /// Downloads, verifies and decrypts a received file into `dest`. Returns the SHA-256 of
    /// the plaintext (checked against the descriptor).
    pub async fn download(
        &mut self,
        media: &proto::Media,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<[u8; 32]> {
        let media_type = MediaType::from_wire(media.media_type as u32)
            .map_err(|_| Error::Media("unsupported media type".into()))?;
        let key = MediaKey::from_slice(&media.media_key)
            .map_err(|_| Error::Media("invalid media key".into()))?;
        let digest = |b: &[u8]| -> Result<[u8; 32]> {
            b.try_into().map_err(|_| Error::Media("invalid descriptor hash".into()))
        };
        let expected = FileDigests {
            plaintext_len: media.size,
            plaintext_sha256: digest(&media.file_sha256)?,
            encrypted_sha256: digest(&media.encrypted_sha256)?,
        };
        let path = interop_media::MediaPath::parse(&media.path)
            .map_err(|_| Error::Media("invalid media path".into()))?;
        let provider = interop_media::ProviderId::parse(&media.provider)
            .map_err(|_| Error::Media("invalid media provider".into()))?;
        let me = self.require_address().await?;
        let own_provider = me.integrator.as_deref() == Some(provider.as_str());
        let (url, bearer) = if provider.as_str() == GATEKEEPER_HOST {
            let (_, base) = self.media_conn().await?;
            (format!("{base}/media/{}", path.as_str()), None)
        } else if own_provider {
            let base = self
                .setting(key::PROVIDER_URL)
                .await?
                .ok_or_else(|| Error::Local("not logged in to a provider".into()))?;
            (format!("{base}/media/{}", path.as_str()), None)
        } else {
            let (token, base) = self.media_conn().await?;
            (format!("{base}/proxy/{}/{}", provider.as_str(), path.as_str()), Some(token))
        };
        let mut request = self.http.get(&url);
        if let Some(t) = bearer {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.map_err(http_err)?;
        if !response.status().is_success() {
            return Err(Error::Media(format!(
                "the media could not be fetched (HTTP {})",
                response.status().as_u16()
            )));
        }
        let total = expected.encrypted_len().unwrap_or(0);
        let tmp = dest.with_extension("part");
        let sink = std::fs::File::create(&tmp)?;
        let hasher = HashingWriter { inner: sink, hash: Sha256::new() };
        let mut decryptor = interop_media::Decryptor::new(&key, media_type, expected, hasher)
            .map_err(|_| Error::Media("invalid descriptor".into()))?;
        let mut stream = response.bytes_stream();
        let mut received = 0u64;
        progress(0, total);
        let outcome = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(http_err)?;
                received += chunk.len() as u64;
                decryptor
                    .update(&chunk)
                    .map_err(|_| Error::Media("the media failed its integrity check".into()))?;
                progress(received, total);
            }
            decryptor
                .finish()
                .map_err(|_| Error::Media("the media failed its integrity check".into()))
        }
        .await;
        let writer = match outcome {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let hash: [u8; 32] = writer.hash.finalize().into();
        writer.inner.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        Ok(hash)
    }
}

/// Writes through, hashing what it writes.
struct HashingWriter {
    inner: std::fs::File,
    hash: Sha256,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Encrypts `src` into `dst`, streaming.
async fn encrypt_file(src: &Path, dst: &Path, key: &MediaKey, t: MediaType) -> Result<FileDigests> {
    let mut input = tokio::fs::File::open(src).await?;
    let mut output = std::fs::File::create(dst)?;
    let mut enc = Encryptor::new(key, t);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(buf.len() + 32);
    loop {
        let n = input.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        out.clear();
        enc.update(&buf[..n], &mut out);
        output.write_all(&out)?;
    }
    out.clear();
    let digests = enc.finish(&mut out);
    output.write_all(&out)?;
    output.sync_all()?;
    Ok(digests)
}

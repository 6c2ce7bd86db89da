//! Pulling from an OCI distribution registry through `oci-client`: HTTPS, or plain HTTP for `localhost`, `127.*`
//! and registries configured as insecure; anonymous, or with a pull secret's user name and password (sent as
//! HTTP Basic, or exchanged for a bearer token when the registry's challenge names a token realm). The manifest (an
//! index resolves to linux/this architecture), configuration and layers go into the store, each verified against
//! its digest (by the client, and again here as the bytes are written).
//!
//! Every pull gets a client of its own: `oci-client` keeps the first credentials it is given per registry, so a
//! shared client would pull one pod's image with another pod's secret.

use super::auth::Credentials;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use super::ImageError;
use super::archive::pick_platform;
use super::progress::ProgressTx;
use super::reference::Reference;
use super::store::{self, Descriptor, Image, Index, Manifest, Store};

const ACCEPT: [&str; 4] = [store::OCI_INDEX, store::OCI_MANIFEST, store::DOCKER_LIST, store::DOCKER_MANIFEST];
/// The longest a manifest (with the authentication before it) may take.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a blob download may go without a byte.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A registry client.
#[derive(Clone, Debug)]
pub struct Puller {
    insecure: Vec<String>,
}

/// Whether `registry` is reached over plain HTTP.
pub fn is_insecure(registry: &str, configured: &[String]) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]" || configured.iter().any(|c| c == registry)
}

/// The media type of a manifest: its `mediaType` field, or, for the older documents without one, an index when it
/// lists `manifests` and an image manifest otherwise.
pub fn media_type_of(manifest: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(manifest) else { return String::new() };
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => m.to_string(),
        None if v.get("manifests").is_some() => store::OCI_INDEX.into(),
        None => store::OCI_MANIFEST.into(),
    }
}

/// Who asked, for the messages of refused pulls.
fn who(with_credentials: bool) -> &'static str {
    if with_credentials { "the credentials" } else { "an anonymous pull (an image pull secret is needed)" }
}

/// The [`ImageError`] a client error is: connection failures are `Unreachable` (a stored copy may then be used),
/// refusals `Unauthorized`, a missing repository or manifest `NotFound`, anything else a failed pull.
pub fn classify(e: OciDistributionError, what: &str, with_credentials: bool) -> ImageError {
    use OciDistributionError as E;
    let refused =
        |url: &str| ImageError::Unauthorized(format!("{url}: the registry refused {}", who(with_credentials)));
    match e {
        E::RequestError(r) if r.is_connect() || r.is_timeout() => ImageError::Unreachable(format!("{what}: {r}")),
        E::UnauthorizedError { url } => refused(&url),
        E::AuthenticationFailure(reason) => ImageError::Unauthorized(format!(
            "{what}: the token endpoint refused {}: {}",
            who(with_credentials),
            reason.trim()
        )),
        E::RegistryError { envelope, url } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                refused(&url)
            } else if codes.iter().any(|c| {
                matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound)
            }) {
                ImageError::NotFound(what.to_string())
            } else {
                ImageError::Pull(format!("{what}: {envelope}"))
            }
        }
        E::ServerError { code: 401 | 403, url, .. } => refused(&url),
        E::ServerError { code: 404, .. } | E::ImageManifestNotFoundError(_) => ImageError::NotFound(what.to_string()),
        E::ServerError { code, message, .. } => {
            ImageError::Pull(format!("{what}: the registry answered {code}: {}", message.trim()))
        }
        E::IoError(source) => ImageError::Io { context: format!("pulling {what}"), source },
        other => ImageError::Pull(format!("{what}: {other}")),
    }
}

/// The client's form of `r`.
fn oci_reference(r: &Reference) -> oci_client::Reference {
    match (&r.digest, &r.tag) {
        (Some(d), _) => oci_client::Reference::with_digest(r.registry.clone(), r.repository.clone(), d.clone()),
        (None, t) => oci_client::Reference::with_tag(
            r.registry.clone(),
            r.repository.clone(),
            t.clone().unwrap_or_else(|| "latest".into()),
        ),
    }
}

/// The bytes and digest of the manifest `r` names.
async fn manifest(
    client: &oci_client::Client,
    r: oci_client::Reference,
    auth: &RegistryAuth,
    what: &str,
    with_credentials: bool,
) -> Result<(bytes::Bytes, String), ImageError> {
    match tokio::time::timeout(MANIFEST_TIMEOUT, client.pull_manifest_raw(&r, auth, &ACCEPT)).await {
        Ok(got) => got.map_err(|e| classify(e, what, with_credentials)),
        Err(_) => Err(ImageError::Unreachable(format!("{what}: the manifest did not arrive in time"))),
    }
}

/// A blob's file as it is written: hashed (so the digest check needs no second read) and counted in the pull's
/// progress.
struct Sink<'a> {
    file: tokio::fs::File,
    hash: sha2::Sha256,
    progress: Option<&'a ProgressTx>,
}

impl AsyncWrite for Sink<'_> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.file).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            sha2::Digest::update(&mut this.hash, &buf[..*n]);
            if let Some(tx) = this.progress {
                tx.send_modify(|s| s.bytes_done += *n as u64);
            }
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl Puller {
    /// A puller trusting the system's roots.
    pub fn new(insecure: Vec<String>) -> Self {
        skiff_client::install_crypto_provider();
        Puller { insecure }
    }

    fn client(&self, reference: &Reference) -> Result<oci_client::Client, ImageError> {
        let protocol =
            if is_insecure(&reference.registry, &self.insecure) { ClientProtocol::Http } else { ClientProtocol::Https };
        let config = ClientConfig {
            protocol,
            // indexes are resolved here, with the store's own platform choice
            platform_resolver: None,
            read_timeout: Some(IDLE_TIMEOUT),
            connect_timeout: Some(CONNECT_TIMEOUT),
            user_agent: concat!("skiff-agent/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        oci_client::Client::try_from(config)
            .map_err(|e| ImageError::Pull(format!("setting up a registry client for {}: {e}", reference.registry)))
    }

    /// Pulls `reference` into `store` and names it there.
    pub async fn pull(
        &self,
        store: &Store,
        reference: &Reference,
        creds: Option<&Credentials>,
        progress: Option<&ProgressTx>,
    ) -> Result<Image, ImageError> {
        let report = |f: &dyn Fn(&mut super::progress::PullState)| {
            if let Some(tx) = progress {
                tx.send_modify(f);
            }
        };
        report(&|s| s.started = true);
        let client = self.client(reference)?;
        let auth =
            creds.map_or(RegistryAuth::Anonymous, |c| RegistryAuth::Basic(c.username.clone(), c.password.clone()));
        let what = reference.to_string();
        let target = oci_reference(reference);
        let manifest_of = |r: oci_client::Reference| manifest(&client, r, &auth, &what, creds.is_some());
        // the client checks the bytes against the digest the reference pins, or the registry's
        // Docker-Content-Digest
        let (mut bytes, mut digest) = manifest_of(target.clone()).await?;
        let mut media_type = media_type_of(&bytes);
        if media_type == store::OCI_INDEX || media_type == store::DOCKER_LIST {
            let index: Index = serde_json::from_slice(&bytes).map_err(|e| ImageError::Pull(format!("index: {e}")))?;
            let d = pick_platform(&index)
                .ok_or_else(|| ImageError::Pull(format!("{reference} has no linux image for this architecture")))?
                .clone();
            (bytes, digest) = manifest_of(target.clone_with_digest(d.digest.clone())).await?;
            if digest != d.digest {
                return Err(ImageError::Pull(format!("manifest content is {digest}, the index says {}", d.digest)));
            }
            media_type = media_type_of(&bytes);
            if !d.media_type.is_empty() {
                media_type = d.media_type;
            }
        }
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::Pull(format!("manifest: {e}")))?;
        let stored = store.write_blob(&bytes)?;
        if stored != digest {
            return Err(ImageError::Pull(format!("manifest content is {stored}, the registry says {digest}")));
        }
        let missing: Vec<&Descriptor> = std::iter::once(&manifest.config)
            .chain(manifest.layers.iter())
            .filter(|b| !store.has_blob(&b.digest))
            .collect();
        report(&|s| {
            s.blobs_total = u32::try_from(missing.len()).unwrap_or(u32::MAX);
            s.bytes_total = missing.iter().map(|b| b.size).sum();
        });
        for blob in missing {
            self.blob(&client, &target, store, blob, progress).await.map_err(|e| match e {
                Fetch::Client(e) => classify(e, &format!("{what} blob {}", blob.digest), creds.is_some()),
                Fetch::Store(e) => e,
            })?;
            report(&|s| s.blobs_done += 1);
        }
        let desc = Descriptor {
            media_type: if media_type.is_empty() { store::OCI_MANIFEST.into() } else { media_type },
            digest: digest.clone(),
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        };
        store.tag(&what, desc)?;
        store.load(&what, &digest)
    }

    async fn blob(
        &self,
        client: &oci_client::Client,
        image: &oci_client::Reference,
        store: &Store,
        d: &Descriptor,
        progress: Option<&ProgressTx>,
    ) -> Result<(), Fetch> {
        let (tmp, file) = store.temp_file().map_err(Fetch::Store)?;
        let mut sink = Sink { file: tokio::fs::File::from_std(file), hash: sha2::Digest::new(), progress };
        let layer = OciDescriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: i64::try_from(d.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let fetched = client.pull_blob(image, &layer, &mut sink).await;
        let flushed = sink.file.flush().await;
        drop(sink.file);
        if let Err(e) = fetched {
            let _ = std::fs::remove_file(&tmp);
            return Err(Fetch::Client(e));
        }
        if let Err(source) = flushed {
            let _ = std::fs::remove_file(&tmp);
            return Err(Fetch::Store(ImageError::Io { context: "writing a blob".into(), source }));
        }
        let actual = format!("sha256:{}", hex::encode(sha2::Digest::finalize(sink.hash)));
        store.commit_hashed(&tmp, &d.digest, &actual).map_err(Fetch::Store)
    }
}

/// Why a blob did not arrive: the registry (classified with the pull's context) or the store.
enum Fetch {
    Client(OciDistributionError),
    Store(ImageError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_insecure("localhost:5000", &[]));
        assert!(is_insecure("127.0.0.1:5000", &[]));
        assert!(!is_insecure("docker.io", &[]));
        assert!(is_insecure("10.0.0.5:5000", &["10.0.0.5:5000".into()]));
    }

    #[test]
    fn media_types_are_read_or_inferred() {
        let cases: [(&str, &str); 4] = [
            (r#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#, store::DOCKER_MANIFEST),
            (r#"{"schemaVersion":2,"manifests":[]}"#, store::OCI_INDEX),
            (r#"{"schemaVersion":2,"config":{},"layers":[]}"#, store::OCI_MANIFEST),
            ("not json", ""),
        ];
        for (doc, want) in cases {
            assert_eq!(media_type_of(doc.as_bytes()), want, "{doc}");
        }
    }

    fn envelope(code: &str) -> OciDistributionError {
        let envelope = serde_json::from_str(&format!(r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#))
            .expect("an OCI error envelope");
        OciDistributionError::RegistryError { envelope, url: "http://r/v2/x/manifests/1".into() }
    }

    fn server(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError { code, url: "http://r/v2/x".into(), message: "no".into() }
    }

    #[test]
    fn client_errors_become_the_kinds_the_kubelet_reports() {
        type Kind = fn(&ImageError) -> bool;
        let unauthorized: Kind = |e| matches!(e, ImageError::Unauthorized(_));
        let not_found: Kind = |e| matches!(e, ImageError::NotFound(_));
        let failed: Kind = |e| matches!(e, ImageError::Pull(_));
        let cases: Vec<(OciDistributionError, Kind)> = vec![
            (OciDistributionError::UnauthorizedError { url: "http://r/v2/".into() }, unauthorized),
            (OciDistributionError::AuthenticationFailure("bad".into()), unauthorized),
            (envelope("UNAUTHORIZED"), unauthorized),
            (envelope("DENIED"), unauthorized),
            (envelope("MANIFEST_UNKNOWN"), not_found),
            (envelope("NAME_UNKNOWN"), not_found),
            (envelope("TOOMANYREQUESTS"), failed),
            (server(401), unauthorized),
            (server(403), unauthorized),
            (server(404), not_found),
            (server(500), failed),
            (OciDistributionError::SpecViolationError("x".into()), failed),
        ];
        for (e, kind) in cases {
            let shown = format!("{e:?}");
            let got = classify(e, "r/x:1", false);
            assert!(kind(&got), "{shown} became {got:?}");
        }
        let anonymous = classify(server(401), "r/x:1", false).to_string();
        assert!(anonymous.contains("unauthorized") && anonymous.contains("pull secret"), "{anonymous}");
        let with_secret = classify(server(401), "r/x:1", true).to_string();
        assert!(with_secret.contains("refused the credentials"), "{with_secret}");
    }

    #[test]
    fn references_keep_their_pin() {
        let tagged = oci_reference(&Reference::parse("localhost:5000/a/b:1.0").expect("valid"));
        assert_eq!((tagged.registry(), tagged.repository(), tagged.tag()), ("localhost:5000", "a/b", Some("1.0")));
        let d = format!("sha256:{}", "ab".repeat(32));
        let pinned = oci_reference(&Reference::parse(&format!("busybox:1@{d}")).expect("valid"));
        assert_eq!(
            (pinned.registry(), pinned.repository(), pinned.digest()),
            ("docker.io", "library/busybox", Some(d.as_str()))
        );
        let latest = oci_reference(&Reference::parse("busybox").expect("valid"));
        assert_eq!(latest.tag(), Some("latest"));
    }
}

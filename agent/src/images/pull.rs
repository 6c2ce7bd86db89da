//! Pulling from an OCI distribution registry (v2 API) over HTTPS, or plain HTTP for `localhost`, `127.*` and
//! registries configured as insecure: manifest (an index resolves to linux/this architecture), configuration and
//! layers into the store, each verified against its digest; anonymous bearer tokens when the registry asks
//! (`WWW-Authenticate: Bearer realm=…`); redirects for blobs.

use super::auth::Credentials;
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt as _;

use super::ImageError;
use super::archive::pick_platform;
use super::progress::ProgressTx;
use super::reference::Reference;
use super::store::{self, Descriptor, Image, Index, Manifest, Store};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A registry client.
#[derive(Clone)]
pub struct Puller {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    insecure: Vec<String>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller").field("insecure", &self.insecure).finish()
    }
}

/// Whether `registry` is reached over plain HTTP.
pub fn is_insecure(registry: &str, configured: &[String]) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]" || configured.iter().any(|c| c == registry)
}

/// Parses `Bearer realm="…",service="…",scope="…"`.
pub fn parse_challenge(value: &str) -> Option<BTreeMap<String, String>> {
    let rest = value.trim().strip_prefix("Bearer ").or_else(|| value.trim().strip_prefix("bearer "))?;
    let mut out = BTreeMap::new();
    let mut s = rest;
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let after = after.trim_start();
        let (val, rest) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], q[end + 1..].trim_start_matches(',').trim_start())
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], after[end..].trim_start_matches(',').trim_start())
        };
        out.insert(key.trim().to_string(), val.to_string());
        s = rest;
    }
    Some(out)
}

impl Puller {
    /// A client trusting the system's roots.
    pub fn new(insecure: Vec<String>) -> Self {
        skiff_client::install_crypto_provider();
        let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no system certificate roots: HTTPS registries will fail verification");
                let cfg = rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(cfg)
            }
        };
        let https = builder.https_or_http().enable_http1().build();
        Puller { client: Client::builder(TokioExecutor::new()).build(https), insecure }
    }

    fn base(&self, r: &Reference) -> String {
        let scheme = if is_insecure(&r.registry, &self.insecure) { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", r.api_host(), r.repository)
    }

    async fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<http::Response<hyper::body::Incoming>, ImageError> {
        let mut req = Request::get(url);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        if let Some(t) = authorization {
            req = req.header(header::AUTHORIZATION, t);
        }
        let req = req.body(Empty::new()).map_err(|e| ImageError::Pull(format!("building a request for {url}: {e}")))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(ImageError::Unreachable(format!("{url}: {e}"))),
            Err(_) => Err(ImageError::Unreachable(format!("{url}: timed out"))),
        }
    }

    /// The `Authorization` value that answers a challenge: a bearer token from the realm (asked for with the
    /// credentials, if any), or the credentials themselves for `Basic`.
    async fn answer(&self, challenge: &HeaderValue, creds: Option<&Credentials>) -> Result<String, ImageError> {
        let text = challenge.to_str().unwrap_or_default().trim();
        if text.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("basic ")) {
            return creds.map(Credentials::basic).ok_or_else(|| {
                ImageError::Unauthorized("the registry needs credentials (an image pull secret)".into())
            });
        }
        Ok(format!("Bearer {}", self.token(challenge, creds).await?))
    }

    async fn token(&self, challenge: &HeaderValue, creds: Option<&Credentials>) -> Result<String, ImageError> {
        let c = challenge
            .to_str()
            .ok()
            .and_then(parse_challenge)
            .ok_or_else(|| ImageError::Pull("unsupported authentication challenge".into()))?;
        let realm = c.get("realm").ok_or_else(|| ImageError::Pull("the challenge has no realm".into()))?;
        let mut url = url::Url::parse(realm).map_err(|e| ImageError::Pull(format!("token realm {realm}: {e}")))?;
        for k in ["service", "scope"] {
            if let Some(v) = c.get(k) {
                url.query_pairs_mut().append_pair(k, v);
            }
        }
        let basic = creds.map(Credentials::basic);
        let resp = self.send(url.as_str(), None, basic.as_deref()).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(ImageError::Unauthorized(format!(
                "the token endpoint refused {}",
                if creds.is_some() { "the credentials" } else { "an anonymous pull (an image pull secret is needed)" }
            )));
        }
        if !resp.status().is_success() {
            return Err(ImageError::Pull(format!("token endpoint answered {}", resp.status())));
        }
        let body = read_all(resp).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ImageError::Pull(format!("token: {e}")))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| ImageError::Pull("no token in the answer".into()))
    }

    /// GET, answering an authentication challenge once (anonymously, or with `creds`), following up to 5
    /// redirects.
    async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        auth: &mut Option<String>,
        creds: Option<&Credentials>,
    ) -> Result<http::Response<hyper::body::Incoming>, ImageError> {
        let mut url = url.to_string();
        for _ in 0..6 {
            let mut resp = self.send(&url, accept, auth.as_deref()).await?;
            if resp.status() == StatusCode::UNAUTHORIZED && auth.is_none() {
                if let Some(ch) = resp.headers().get(header::WWW_AUTHENTICATE).cloned() {
                    *auth = Some(self.answer(&ch, creds).await?);
                    resp = self.send(&url, accept, auth.as_deref()).await?;
                }
            }
            if resp.status() == StatusCode::UNAUTHORIZED {
                return Err(ImageError::Unauthorized(format!(
                    "{url}: the registry refused {}",
                    if creds.is_some() {
                        "the credentials"
                    } else {
                        "an anonymous pull (an image pull secret is needed)"
                    }
                )));
            }
            if resp.status().is_redirection() {
                let loc = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| ImageError::Pull("redirect without Location".into()))?;
                url = url::Url::parse(&url)
                    .and_then(|u| u.join(loc))
                    .map_err(|e| ImageError::Pull(format!("redirect {loc}: {e}")))?
                    .to_string();
                continue;
            }
            return Ok(resp);
        }
        Err(ImageError::Pull(format!("too many redirects for {url}")))
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
        let base = self.base(reference);
        let mut token = None;
        let (mut bytes, mut media_type) =
            self.manifest(&format!("{base}/manifests/{}", reference.reference()), &mut token, reference, creds).await?;
        if media_type == store::OCI_INDEX || media_type == store::DOCKER_LIST {
            let index: Index = serde_json::from_slice(&bytes).map_err(|e| ImageError::Pull(format!("index: {e}")))?;
            let d = pick_platform(&index)
                .ok_or_else(|| ImageError::Pull(format!("{reference} has no linux image for this architecture")))?
                .clone();
            (bytes, media_type) =
                self.manifest(&format!("{base}/manifests/{}", d.digest), &mut token, reference, creds).await?;
            if store::digest_of(&bytes) != d.digest {
                return Err(ImageError::Pull(format!("manifest content does not match {}", d.digest)));
            }
        }
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::Pull(format!("manifest: {e}")))?;
        let digest = store.write_blob(&bytes)?;
        if let Some(want) = &reference.digest
            && want != &digest
            && media_type != store::OCI_INDEX
        {
            tracing::debug!(%want, %digest, "pulled through an index");
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
            self.blob(store, &base, blob, &mut token, creds, progress).await?;
            report(&|s| s.blobs_done += 1);
        }
        let desc = Descriptor {
            media_type: if media_type.is_empty() { store::OCI_MANIFEST.into() } else { media_type },
            digest: digest.clone(),
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        };
        store.tag(&reference.to_string(), desc)?;
        store.load(&reference.to_string(), &digest)
    }

    async fn manifest(
        &self,
        url: &str,
        token: &mut Option<String>,
        reference: &Reference,
        creds: Option<&Credentials>,
    ) -> Result<(Vec<u8>, String), ImageError> {
        let resp = self.get(url, Some(ACCEPT), token, creds).await?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(ImageError::NotFound(reference.to_string())),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(ImageError::Pull(format!("{reference}: access denied ({})", resp.status())));
            }
            s => return Err(ImageError::Pull(format!("{reference}: the registry answered {s}"))),
        }
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let bytes = read_all(resp).await?.to_vec();
        let media_type = if ct.is_empty() || ct == "application/json" {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string))
                .unwrap_or_default()
        } else {
            ct
        };
        Ok((bytes, media_type))
    }

    async fn blob(
        &self,
        store: &Store,
        base: &str,
        d: &Descriptor,
        token: &mut Option<String>,
        creds: Option<&Credentials>,
        progress: Option<&ProgressTx>,
    ) -> Result<(), ImageError> {
        let resp = self.get(&format!("{base}/blobs/{}", d.digest), None, token, creds).await?;
        if !resp.status().is_success() {
            return Err(ImageError::Pull(format!("blob {}: the registry answered {}", d.digest, resp.status())));
        }
        let (tmp, file) = store.temp_file()?;
        let mut out = tokio::fs::File::from_std(file);
        let mut body = resp.into_body();
        // hashed as it arrives, so the digest check needs no second read of the file
        let mut hash = <sha2::Sha256 as sha2::Digest>::new();
        let result: Result<(), ImageError> = async {
            loop {
                let frame = match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
                    Ok(Some(Ok(f))) => f,
                    Ok(Some(Err(e))) => return Err(ImageError::Pull(format!("blob {}: {e}", d.digest))),
                    Ok(None) => break,
                    Err(_) => return Err(ImageError::Pull(format!("blob {}: stalled", d.digest))),
                };
                if let Ok(data) = frame.into_data() {
                    sha2::Digest::update(&mut hash, &data);
                    out.write_all(&data)
                        .await
                        .map_err(|e| ImageError::Io { context: "writing a blob".into(), source: e })?;
                    if let Some(tx) = progress {
                        tx.send_modify(|s| s.bytes_done += data.len() as u64);
                    }
                }
            }
            out.flush().await.map_err(|e| ImageError::Io { context: "writing a blob".into(), source: e })
        }
        .await;
        drop(out);
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let actual = format!("sha256:{}", hex::encode(sha2::Digest::finalize(hash)));
        store.commit_hashed(&tmp, &d.digest, &actual)
    }
}

async fn read_all(resp: http::Response<hyper::body::Incoming>) -> Result<Bytes, ImageError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err(ImageError::Pull(format!("reading an answer: {e}"))),
        Err(_) => Err(ImageError::Pull("reading an answer timed out".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_parsed() {
        let c = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#).expect("parses");
        assert_eq!(c["realm"], "https://auth.docker.io/token");
        assert_eq!(c["scope"], "repository:library/busybox:pull");
        assert!(parse_challenge("Basic realm=x").is_none());
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_insecure("localhost:5000", &[]));
        assert!(is_insecure("127.0.0.1:5000", &[]));
        assert!(!is_insecure("docker.io", &[]));
        assert!(is_insecure("10.0.0.5:5000", &["10.0.0.5:5000".into()]));
    }
}

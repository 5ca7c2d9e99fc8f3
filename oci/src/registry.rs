//! A registry client per the OCI distribution spec: manifests with the full Accept list,
//! verified blobs, anonymous/Basic/Bearer auth, resumable blob downloads and monolithic push.
//!
//! Transport rules: registries on loopback addresses and those configured as insecure are
//! reached over plain HTTP (as Docker does); every other registry over HTTPS, verified against
//! the system roots plus any configured CA. Redirects are followed by the HTTP client, which
//! drops `Authorization` when the redirect leaves the registry's host and port.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE,
};
use reqwest::StatusCode;
use tracing::{debug, warn};

use crate::digest::Digest;
use crate::reference::Reference;
use crate::spec;

/// Manifests and configs are small: anything bigger is refused before it is read.
pub const MAX_MANIFEST: u64 = 4 << 20;
pub const MAX_CONFIG: u64 = 8 << 20;
/// How long a registry may send nothing before knode gives up on that connection.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry} unreachable: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("{what} not found in registry {registry}")]
    NotFound { registry: String, what: String },
    #[error("registry {registry} refused authentication: {reason}")]
    Unauthorized { registry: String, reason: String },
    #[error("registry {registry} answered {status} for {what}: {body}")]
    Status {
        registry: String,
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("registry configuration: {0}")]
    Config(String),
}

/// Docker-style `config.json` credentials (`auths.<host>.auth` = base64 of `user:password`).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    by_host: HashMap<String, (String, String)>,
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Credentials, RegistryError> {
        let bad = |r: String| RegistryError::Config(format!("{}: {r}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut by_host = HashMap::new();
        if let Some(auths) = v.get("auths").and_then(|a| a.as_object()) {
            for (key, entry) in auths {
                let host = normalise_auth_key(key);
                if let Some(enc) = entry.get("auth").and_then(|a| a.as_str()) {
                    let dec = base64::engine::general_purpose::STANDARD
                        .decode(enc.trim())
                        .map_err(|e| bad(format!("auths.{key}.auth is not base64: {e}")))?;
                    let s = String::from_utf8(dec)
                        .map_err(|_| bad(format!("auths.{key}.auth is not UTF-8")))?;
                    let (u, p) = s
                        .split_once(':')
                        .ok_or_else(|| bad(format!("auths.{key}.auth is not user:password")))?;
                    by_host.insert(host, (u.to_string(), p.to_string()));
                } else if let (Some(u), Some(p)) = (
                    entry.get("username").and_then(|x| x.as_str()),
                    entry.get("password").and_then(|x| x.as_str()),
                ) {
                    by_host.insert(host, (u.to_string(), p.to_string()));
                }
            }
        }
        Ok(Credentials { by_host })
    }

    pub fn insert(&mut self, host: &str, user: &str, password: &str) {
        self.by_host.insert(
            normalise_auth_key(host),
            (user.to_string(), password.to_string()),
        );
    }

    pub(crate) fn get(&self, registry: &str) -> Option<&(String, String)> {
        self.by_host.get(registry)
    }
}

fn normalise_auth_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    match k {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        k => k.into(),
    }
}

#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Registries reached over plain HTTP even though they are not on loopback.
    pub insecure: Vec<String>,
    /// Extra PEM CA certificates trusted for HTTPS registries.
    pub ca_files: Vec<PathBuf>,
    pub credentials: Credentials,
    /// Attempts per request (and per broken blob transfer) before giving up.
    pub retries: u32,
    /// Static name resolution (`host:port` -> address), like curl's `--resolve`: for labs
    /// without DNS for their registry's name.
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// A client certificate and key (PEM files) to present.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Accept any server certificate (a mirror's `insecure_skip_verify`).
    pub accept_invalid_certs: bool,
    /// Mirrors and per-host settings (`registries.yaml`): where a pull looks first.
    pub mirrors: crate::mirrors::Mirrors,
}

pub struct RegistryClient {
    http: Client,
    opts: ClientOptions,
    /// Authorization header per (registry, repository): Basic or a Bearer token.
    auth: Mutex<HashMap<(String, String), Auth>>,
}

#[derive(Clone)]
enum Auth {
    Basic(String),
    Bearer(String, Instant),
}

fn is_loopback(host: &str) -> bool {
    let h = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A fetched manifest or index, verified against its digest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

impl RegistryClient {
    pub fn new(opts: ClientOptions) -> Result<RegistryClient, RegistryError> {
        let mut b = Client::builder()
            // The blocking client applies this to each read, not to whole transfers: a stall
            // longer than this breaks the transfer, which then resumes with Range.
            .timeout(STALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(15))
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("knode/", env!("CARGO_PKG_VERSION")));
        for (host, addr) in &opts.resolve {
            b = b.resolve(host, *addr);
        }
        for f in &opts.ca_files {
            let pem = std::fs::read(f)
                .map_err(|e| RegistryError::Config(format!("CA file {}: {e}", f.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| RegistryError::Config(format!("CA file {}: {e}", f.display())))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some((cert, key)) = &opts.client_cert {
            let bad = |e: &dyn std::fmt::Display| {
                RegistryError::Config(format!(
                    "client certificate {} / {}: {e}",
                    cert.display(),
                    key.display()
                ))
            };
            let mut pem = std::fs::read(cert).map_err(|e| bad(&e))?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|e| bad(&e))?);
            b = b.identity(reqwest::Identity::from_pem(&pem).map_err(|e| bad(&e))?);
        }
        if opts.accept_invalid_certs {
            b = b.danger_accept_invalid_certs(true);
        }
        let http = b
            .build()
            .map_err(|e| RegistryError::Config(format!("HTTP client: {e}")))?;
        let opts = ClientOptions {
            retries: opts.retries.max(1),
            ..opts
        };
        Ok(RegistryClient {
            http,
            opts,
            auth: Mutex::new(HashMap::new()),
        })
    }

    fn base(&self, r: &Reference) -> String {
        let host = r.api_host();
        let plain = is_loopback(host)
            || self
                .opts
                .insecure
                .iter()
                .any(|h| h == host || h == &r.registry);
        format!(
            "{}://{}/v2/{}",
            if plain { "http" } else { "https" },
            host,
            r.repository
        )
    }

    /// Sends a request, answering auth challenges once. `make` builds the request afresh.
    fn send(
        &self,
        r: &Reference,
        push: bool,
        what: &str,
        make: &dyn Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let key = (r.registry.clone(), r.repository.clone());
        let mut last_err = None;
        for attempt in 0..self.opts.retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 * (1 << attempt.min(4))));
            }
            let cached = self.auth.lock().expect("auth lock").get(&key).cloned();
            let header = match &cached {
                Some(Auth::Basic(h)) => Some(h.as_str()),
                Some(Auth::Bearer(t, exp)) if *exp > Instant::now() => Some(t.as_str()),
                _ => None,
            };
            let resp = match self.execute(r, make(), header) {
                Ok(resp) => resp,
                Err(e) => {
                    last_err = Some(self.unreachable(r, &e));
                    if e.is_connect() || e.is_timeout() || e.is_request() {
                        continue;
                    }
                    break;
                }
            };
            if resp.status() == StatusCode::UNAUTHORIZED {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let auth = self.authenticate(r, push, &challenge)?;
                self.auth
                    .lock()
                    .expect("auth lock")
                    .insert(key.clone(), auth.clone());
                let h = match &auth {
                    Auth::Basic(h) | Auth::Bearer(h, _) => h.clone(),
                };
                let resp = self
                    .execute(r, make(), Some(&h))
                    .map_err(|e| self.unreachable(r, &e))?;
                if resp.status() == StatusCode::UNAUTHORIZED {
                    self.auth.lock().expect("auth lock").remove(&key);
                    return Err(RegistryError::Unauthorized {
                        registry: r.registry.clone(),
                        reason: format!("{what}: credentials rejected"),
                    });
                }
                return Ok(resp);
            }
            if resp.status().is_server_error() || resp.status() == StatusCode::TOO_MANY_REQUESTS {
                last_err = Some(status_error(r, what, resp));
                continue;
            }
            return Ok(resp);
        }
        Err(last_err.unwrap_or_else(|| RegistryError::Unreachable {
            registry: r.registry.clone(),
            reason: "no attempt made".into(),
        }))
    }

    /// Sends a request, with `auth` only if it goes to the registry itself (same scheme, host
    /// and port): an upload `Location` elsewhere never sees the registry's credentials.
    fn execute(
        &self,
        r: &Reference,
        req: RequestBuilder,
        auth: Option<&str>,
    ) -> reqwest::Result<Response> {
        let mut req = req.build()?;
        if let (Some(h), Ok(base)) = (auth, reqwest::Url::parse(&self.base(r))) {
            let u = req.url();
            let same = u.scheme() == base.scheme()
                && u.host_str() == base.host_str()
                && u.port_or_known_default() == base.port_or_known_default();
            if same {
                if let Ok(v) = reqwest::header::HeaderValue::from_str(h) {
                    req.headers_mut().insert(AUTHORIZATION, v);
                }
            }
        }
        self.http.execute(req)
    }

    fn unreachable(&self, r: &Reference, e: &reqwest::Error) -> RegistryError {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        RegistryError::Unreachable {
            registry: r.registry.clone(),
            reason,
        }
    }

    fn authenticate(
        &self,
        r: &Reference,
        push: bool,
        challenge: &str,
    ) -> Result<Auth, RegistryError> {
        let creds = self.opts.credentials.get(&r.registry);
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let (u, p) = creds.ok_or_else(|| RegistryError::Unauthorized {
                    registry: r.registry.clone(),
                    reason:
                        "Basic authentication required but no credentials are configured for it"
                            .into(),
                })?;
                let enc = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                Ok(Auth::Basic(format!("Basic {enc}")))
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| RegistryError::Unauthorized {
                        registry: r.registry.clone(),
                        reason: "Bearer challenge without realm".into(),
                    })?;
                let scope = params.get("scope").cloned().unwrap_or_else(|| {
                    format!(
                        "repository:{}:{}",
                        r.repository,
                        if push { "pull,push" } else { "pull" }
                    )
                });
                let mut url =
                    reqwest::Url::parse(realm).map_err(|e| RegistryError::Unauthorized {
                        registry: r.registry.clone(),
                        reason: format!("bad token realm {realm:?}: {e}"),
                    })?;
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = params.get("service") {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", &scope);
                }
                let realm_https = url.scheme() == "https";
                let mut req = self.http.get(url);
                // Credentials go to the token server only over HTTPS, or in the clear when
                // the registry itself is reached in the clear (loopback, --insecure-registry).
                let registry_plain = self.base(r).starts_with("http:");
                if let Some((u, p)) = creds.filter(|_| realm_https || registry_plain) {
                    req = req.basic_auth(u, Some(p));
                }
                let resp = req.send().map_err(|e| self.unreachable(r, &e))?;
                if !resp.status().is_success() {
                    return Err(RegistryError::Unauthorized {
                        registry: r.registry.clone(),
                        reason: format!("token server answered {}", resp.status()),
                    });
                }
                let body: serde_json::Value = read_limited(resp, MAX_MANIFEST)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .ok_or_else(|| RegistryError::Unauthorized {
                        registry: r.registry.clone(),
                        reason: "token server sent no JSON".into(),
                    })?;
                let token = body
                    .get("token")
                    .or_else(|| body.get("access_token"))
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| RegistryError::Unauthorized {
                        registry: r.registry.clone(),
                        reason: "token server response has no token".into(),
                    })?;
                let ttl = body
                    .get("expires_in")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(60)
                    .max(10);
                let expires = Instant::now() + Duration::from_secs(ttl.saturating_sub(5));
                Ok(Auth::Bearer(format!("Bearer {token}"), expires))
            }
            _ => Err(RegistryError::Unauthorized {
                registry: r.registry.clone(),
                reason: format!("unsupported authentication challenge {challenge:?}"),
            }),
        }
    }

    /// Fetches a manifest or index by tag or digest and verifies it.
    pub fn fetch_manifest(
        &self,
        r: &Reference,
        target: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let url = format!("{}/manifests/{}", self.base(r), target);
        let what = format!("manifest {}:{}", r.name(), target);
        let resp = self.send(r, false, &what, &|| {
            self.http.get(&url).header(ACCEPT, spec::MANIFEST_ACCEPT)
        })?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                registry: r.registry.clone(),
                what: format!("image {r}"),
            });
        }
        if !resp.status().is_success() {
            return Err(status_error(r, &what, resp));
        }
        let content_type = header_str(resp.headers(), CONTENT_TYPE)
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let bytes = read_limited(resp, MAX_MANIFEST).map_err(|e| RegistryError::Io {
            what: what.clone(),
            source: e,
        })?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = target.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    what,
                    expected,
                    actual: digest,
                });
            }
        }
        let media_type = check_manifest_media_type(&bytes, &content_type, &what)?;
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Fetches a small blob (a config) fully and verifies digest and size.
    pub fn fetch_blob(
        &self,
        r: &Reference,
        d: &spec::Descriptor,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("blob {} of {}", d.digest, r.name());
        if d.size > limit {
            return Err(RegistryError::Invalid {
                what,
                reason: format!("size {} exceeds the limit of {limit} bytes", d.size),
            });
        }
        let mut reader = self.open_blob(r, d)?;
        let mut bytes = Vec::with_capacity(d.size as usize);
        (&mut reader)
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| RegistryError::Io {
                what: what.clone(),
                source: e,
            })?;
        let actual = Digest::of(&bytes);
        if actual != d.digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: d.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Opens a blob for streaming. The reader resumes broken transfers with `Range` requests
    /// and fails if the blob is longer or shorter than the descriptor says. The caller verifies
    /// the digest of what it reads.
    pub fn open_blob<'a>(
        &'a self,
        r: &'a Reference,
        d: &spec::Descriptor,
    ) -> Result<BlobReader<'a>, RegistryError> {
        let mut b = BlobReader {
            client: self,
            reference: r,
            url: format!("{}/blobs/{}", self.base(r), d.digest),
            what: format!("layer {}", d.digest),
            size: d.size,
            offset: 0,
            resp: None,
            failures: 0,
        };
        b.connect()?;
        Ok(b)
    }

    /// Whether the registry already has a blob.
    pub fn has_blob(&self, r: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        let url = format!("{}/blobs/{}", self.base(r), digest);
        let resp = self.send(r, true, "blob check", &|| self.http.head(&url))?;
        Ok(resp.status().is_success())
    }

    /// Uploads a blob in one request (POST then PUT), unless the registry has it.
    pub fn push_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        data: &[u8],
    ) -> Result<(), RegistryError> {
        if self.has_blob(r, digest)? {
            return Ok(());
        }
        let what = format!("upload of {digest}");
        let url = format!("{}/blobs/uploads/", self.base(r));
        let resp = self.send(r, true, &what, &|| self.http.post(&url))?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(r, &what, resp));
        }
        let loc = header_str(resp.headers(), LOCATION).ok_or_else(|| RegistryError::Invalid {
            what: what.clone(),
            reason: "upload response has no Location".into(),
        })?;
        let mut put = resp.url().join(&loc).map_err(|e| RegistryError::Invalid {
            what: what.clone(),
            reason: format!("bad upload location: {e}"),
        })?;
        put.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let body = data.to_vec();
        let resp = self.send(r, true, &what, &|| {
            self.http
                .put(put.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body.clone())
        })?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(r, &what, resp));
        }
        Ok(())
    }

    /// Uploads a manifest under a tag (or its digest).
    pub fn push_manifest(
        &self,
        r: &Reference,
        target: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), RegistryError> {
        let what = format!("manifest push {}:{target}", r.name());
        let url = format!("{}/manifests/{target}", self.base(r));
        let resp = self.send(r, true, &what, &|| {
            self.http
                .put(&url)
                .header(CONTENT_TYPE, media_type)
                .body(bytes.to_vec())
        })?;
        if !resp.status().is_success() {
            return Err(status_error(r, &what, resp));
        }
        Ok(())
    }
}

fn header_str(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn status_error(r: &Reference, what: &str, resp: Response) -> RegistryError {
    let status = resp.status().as_u16();
    let body = read_limited(resp, 4096)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim()
                .chars()
                .take(300)
                .collect()
        })
        .unwrap_or_default();
    RegistryError::Status {
        registry: r.registry.clone(),
        what: what.to_string(),
        status,
        body,
    }
}

fn read_limited(resp: Response, limit: u64) -> io::Result<Vec<u8>> {
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(io::Error::other(format!(
            "response larger than {limit} bytes"
        )));
    }
    let mut v = Vec::new();
    resp.take(limit + 1).read_to_end(&mut v)?;
    if v.len() as u64 > limit {
        return Err(io::Error::other(format!(
            "response larger than {limit} bytes"
        )));
    }
    Ok(v)
}

/// The media type of a manifest: the body's `mediaType` must agree with the Content-Type
/// (CVE-2021-41190), schema1 is refused, and an untyped body is classified by its fields.
fn check_manifest_media_type(
    bytes: &[u8],
    content_type: &str,
    what: &str,
) -> Result<String, RegistryError> {
    let invalid = |reason: String| RegistryError::Invalid {
        what: what.to_string(),
        reason,
    };
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("malformed manifest JSON: {e}")))?;
    let body_type = v
        .get("mediaType")
        .and_then(|m| m.as_str())
        .map(str::to_string);
    let known = [
        spec::OCI_INDEX,
        spec::OCI_MANIFEST,
        spec::DOCKER_MANIFEST_LIST,
        spec::DOCKER_MANIFEST,
    ];
    if content_type == spec::DOCKER_SCHEMA1
        || content_type == "application/vnd.docker.distribution.manifest.v1+json"
        || v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1)
    {
        return Err(invalid("Docker schema1 manifests are not supported".into()));
    }
    if let Some(bt) = &body_type {
        if known.contains(&content_type) && bt != content_type {
            return Err(invalid(format!(
                "mediaType {bt:?} in the body does not match Content-Type {content_type:?}"
            )));
        }
    }
    let mt = match (&body_type, content_type) {
        (Some(bt), _) => bt.clone(),
        (None, ct) if known.contains(&ct) => ct.to_string(),
        (None, _) if v.get("manifests").is_some() => spec::OCI_INDEX.to_string(),
        (None, _) if v.get("config").is_some() => spec::OCI_MANIFEST.to_string(),
        (None, ct) => {
            return Err(invalid(format!(
                "cannot tell the manifest type (Content-Type {ct:?})"
            )))
        }
    };
    if !known.contains(&mt.as_str()) {
        return Err(invalid(format!("unsupported manifest media type {mt:?}")));
    }
    // An index must not carry layers and a manifest must not carry manifests.
    let is_index = mt == spec::OCI_INDEX || mt == spec::DOCKER_MANIFEST_LIST;
    if (is_index && v.get("layers").is_some()) || (!is_index && v.get("manifests").is_some()) {
        return Err(invalid(format!(
            "document of type {mt:?} has the other kind's fields"
        )));
    }
    Ok(mt)
}

/// `Bearer realm="x",service="y"` -> ("Bearer", {realm: x, service: y}).
fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some(eq) = s.find('=') else { break };
        let key = s[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        s = &s[eq + 1..];
        let value;
        if let Some(stripped) = s.strip_prefix('"') {
            let end = stripped.find('"').unwrap_or(stripped.len());
            value = stripped[..end].to_string();
            s = stripped.get(end + 1..).unwrap_or("");
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_string();
            s = &s[end..];
        }
        s = s.trim_start_matches(',').trim();
        params.insert(key, value);
    }
    (scheme.to_string(), params)
}

/// A blob download that resumes where it broke off (`Range: bytes=N-`).
pub struct BlobReader<'a> {
    client: &'a RegistryClient,
    reference: &'a Reference,
    url: String,
    what: String,
    size: u64,
    offset: u64,
    resp: Option<Response>,
    failures: u32,
}

impl BlobReader<'_> {
    fn connect(&mut self) -> Result<(), RegistryError> {
        let offset = self.offset;
        let url = self.url.clone();
        let http = &self.client.http;
        let resp = self.client.send(self.reference, false, &self.what, &|| {
            let req = http.get(&url);
            if offset > 0 {
                req.header(RANGE, format!("bytes={offset}-"))
            } else {
                req
            }
        })?;
        match resp.status() {
            StatusCode::OK => {
                if offset > 0 {
                    // The server ignored Range: skip what we already have.
                    let mut r = resp;
                    let skipped =
                        io::copy(&mut (&mut r).take(offset), &mut io::sink()).map_err(|e| {
                            RegistryError::Io {
                                what: self.what.clone(),
                                source: e,
                            }
                        })?;
                    if skipped != offset {
                        return Err(RegistryError::Invalid {
                            what: self.what.clone(),
                            reason: format!("resumed transfer ended after {skipped} of the {offset} bytes already received"),
                        });
                    }
                    self.resp = Some(r);
                } else {
                    self.resp = Some(resp);
                }
                Ok(())
            }
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                // `Content-Range: bytes START-END/TOTAL` must start where we are.
                let start =
                    header_str(resp.headers(), reqwest::header::CONTENT_RANGE).and_then(|v| {
                        v.strip_prefix("bytes ")
                            .and_then(|r| r.split('-').next())
                            .and_then(|s| s.trim().parse::<u64>().ok())
                    });
                if start != Some(offset) {
                    return Err(RegistryError::Invalid {
                        what: self.what.clone(),
                        reason: format!("range request from byte {offset} answered with Content-Range starting at {start:?}"),
                    });
                }
                self.resp = Some(resp);
                Ok(())
            }
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound {
                registry: self.reference.registry.clone(),
                what: format!("{} of {}", self.what, self.reference.name()),
            }),
            _ => Err(status_error(self.reference, &self.what, resp)),
        }
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.offset >= self.size {
                // Never read past the descriptor's size: a longer blob is an error.
                if let Some(r) = self.resp.as_mut() {
                    let mut one = [0u8; 1];
                    if matches!(r.read(&mut one), Ok(n) if n > 0) {
                        return Err(io::Error::other(format!(
                            "{} is longer than the {} bytes its descriptor declares",
                            self.what, self.size
                        )));
                    }
                }
                self.resp = None;
                return Ok(0);
            }
            let want = buf.len().min((self.size - self.offset) as usize);
            let res = match self.resp.as_mut() {
                Some(r) => r.read(&mut buf[..want]),
                None => Err(io::Error::other("not connected")),
            };
            match res {
                Ok(n) if n > 0 => {
                    self.offset += n as u64;
                    self.failures = 0; // progress: only consecutive failures count
                    return Ok(n);
                }
                Ok(_) | Err(_) => {
                    // Broken or short transfer: resume from where we are.
                    let reason = match res {
                        Err(e) => e.to_string(),
                        _ => "connection closed early".into(),
                    };
                    self.failures += 1;
                    if self.failures > self.client.opts.retries + 2 {
                        return Err(io::Error::other(format!(
                            "{}: transfer failed at byte {} of {} after {} attempts: {reason}",
                            self.what, self.offset, self.size, self.failures
                        )));
                    }
                    warn!(what = %self.what, offset = self.offset, %reason, "blob transfer broke; resuming");
                    self.resp = None;
                    if let Err(e) = self.connect() {
                        debug!(error = %e, "resume failed");
                        return Err(io::Error::other(e.to_string()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (s.as_str(), p["realm"].as_str()),
            ("Basic", "Registry Realm")
        );
    }

    #[test]
    fn media_type_confusion_is_refused() {
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert!(check_manifest_media_type(idx, spec::OCI_MANIFEST, "m").is_err());
        assert_eq!(
            check_manifest_media_type(idx, spec::OCI_INDEX, "m").unwrap(),
            spec::OCI_INDEX
        );
        let s1 = br#"{"schemaVersion":1,"name":"x"}"#;
        assert!(check_manifest_media_type(s1, "application/json", "m").is_err());
        let untyped = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(
            check_manifest_media_type(untyped, spec::OCI_MANIFEST, "m").unwrap(),
            spec::OCI_MANIFEST
        );
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(!is_loopback("registry.example"));
    }

    #[test]
    fn credentials_from_config_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"127.0.0.1:5000":{"username":"a","password":"b"}}}"#).unwrap();
        let c = Credentials::load(&p).unwrap();
        assert_eq!(
            c.get("docker.io").unwrap(),
            &("u".to_string(), "p".to_string())
        );
        assert_eq!(c.get("127.0.0.1:5000").unwrap().0, "a");
        std::fs::write(&p, r#"{"auths":{"x":{"auth":"!!"}}}"#).unwrap();
        assert!(Credentials::load(&p).is_err());
    }
}

//! Authentication, in the order k8s.io/apiserver's delegating authenticator uses:
//! front-proxy request headers, then the client certificate, then a bearer token, then anonymous.
//!
//! An authenticator that finds credentials it cannot accept is an *error* (401), not a fall
//! through to anonymous: a certificate from an unknown CA or an invalid token must never end
//! up as `system:anonymous` with whatever that user may do.

pub mod source;

use crate::apiserver::cache::TtlCache;
use crate::apiserver::tls::{subject_names, ChainVerifier};
use http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The anonymous user.
pub const ANONYMOUS: &str = "system:anonymous";
/// Group of the anonymous user.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// Group added to every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";

/// Errors of authentication.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Credentials were presented and refused.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// TokenReview could not be done.
    #[error("token review failed: {0}")]
    TokenReview(#[from] kube::Error),
    /// The static token file is unusable.
    #[error("token file {path}: {message}")]
    TokenFile {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct UserInfo {
    /// User name.
    pub name: String,
    /// UID, may be empty.
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes, keys lower-case.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// `system:anonymous` in `system:unauthenticated`.
    pub fn anonymous() -> Self {
        UserInfo {
            name: ANONYMOUS.into(),
            groups: vec![UNAUTHENTICATED.into()],
            ..Default::default()
        }
    }

    /// Adds `system:authenticated` unless present, as k8s' AuthenticatedGroupAdder does.
    fn authenticated(mut self) -> Self {
        if !self.groups.iter().any(|g| g == AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.into());
        }
        self
    }
}

/// Front-proxy (request-header) settings.
#[derive(Debug, Clone)]
pub struct RequestHeaderConfig {
    /// The front-proxy CA.
    pub verifier: ChainVerifier,
    /// Allowed client CNs; empty allows any.
    pub allowed_names: Vec<String>,
    /// Username headers, first present wins.
    pub username_headers: Vec<String>,
    /// UID headers, first present wins.
    pub uid_headers: Vec<String>,
    /// Group headers, all values of all of them.
    pub group_headers: Vec<String>,
    /// Extra header prefixes.
    pub extra_prefixes: Vec<String>,
}

/// The certificate side of the authentication configuration (from the ConfigMap or flags).
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Front-proxy path, when a request-header CA is configured.
    pub request_header: Option<RequestHeaderConfig>,
    /// Client-certificate path, when a client CA is configured.
    pub client_ca: Option<ChainVerifier>,
}

/// A header value as text. kube-apiserver sends user, group and extra values as raw UTF-8,
/// which `HeaderValue::to_str` (visible ASCII only) would drop; a dropped group or extra would
/// describe a different identity to the authorizer, so nothing is dropped: invalid UTF-8 (which
/// kube-apiserver never sends) becomes replacement characters, a name that matches no one.
fn header_text(v: &http::HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

impl RequestHeaderConfig {
    fn cn_allowed(&self, cn: &str) -> bool {
        self.allowed_names.is_empty() || self.allowed_names.iter().any(|n| n == cn)
    }

    /// The user from the identity headers, `None` when no username header is present.
    pub fn user_from_headers(&self, headers: &HeaderMap) -> Option<UserInfo> {
        let first = |names: &[String]| {
            names
                .iter()
                .find_map(|h| headers.get(h.as_str()).map(header_text).filter(|v| !v.is_empty()))
        };
        let name = first(&self.username_headers)?;
        let uid = first(&self.uid_headers).unwrap_or_default();
        let mut groups = Vec::new();
        for h in &self.group_headers {
            // Empty values are skipped, as Kubernetes does.
            groups.extend(
                headers
                    .get_all(h.as_str())
                    .iter()
                    .map(header_text)
                    .filter(|g| !g.is_empty()),
            );
        }
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (hname, value) in headers {
            // `http` stores header names lower-case already.
            let hname = hname.as_str();
            for prefix in &self.extra_prefixes {
                let prefix = prefix.to_ascii_lowercase();
                if let Some(encoded) = hname.strip_prefix(prefix.as_str()) {
                    extra
                        .entry(unescape_extra_key(encoded))
                        .or_default()
                        .push(header_text(value));
                }
            }
        }
        Some(UserInfo {
            name,
            uid,
            groups,
            extra,
        })
    }
}

/// k8s' `unescapeExtraKey`: `url.PathUnescape` of the lower-cased key, keeping the encoded form
/// when it is not valid escaping.
pub fn unescape_extra_key(encoded: &str) -> String {
    let key = encoded.to_ascii_lowercase();
    let bytes = key.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let valid = bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !valid {
                return key;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_encoding::percent_decode_str(&key)
        .decode_utf8()
        .map(|s| s.into_owned())
        .unwrap_or(key)
}

/// Where bearer tokens are checked.
pub enum TokenAuthenticator {
    /// No token authentication: a bearer token is an error.
    None,
    /// A static token file (standalone mode).
    Static(HashMap<String, UserInfo>),
    /// TokenReview against kube-apiserver, with a cache.
    Review(TokenReviewer),
}

/// TokenReview client with a TTL cache keyed by the token's SHA-256 (tokens are not kept).
pub struct TokenReviewer {
    client: kube::Client,
    cache: TtlCache<[u8; 32], Option<UserInfo>>,
}

impl TokenReviewer {
    /// A reviewer using `client`, caching answers (authenticated or not) for `ttl`.
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        TokenReviewer {
            client,
            cache: TtlCache::new(ttl),
        }
    }

    async fn review(&self, token: &str) -> Result<Option<UserInfo>, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.cache
            .get_or_fetch(key, || async {
                let review = TokenReview {
                    spec: TokenReviewSpec {
                        token: Some(token.to_string()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
                let answer = api.create(&kube::api::PostParams::default(), &review).await?;
                let status = answer.status.unwrap_or_default();
                if status.authenticated != Some(true) {
                    return Ok(None);
                }
                Ok(status.user.map(|u| UserInfo {
                    name: u.username.unwrap_or_default(),
                    uid: u.uid.unwrap_or_default(),
                    groups: u.groups.unwrap_or_default(),
                    extra: u.extra.unwrap_or_default(),
                }))
            })
            .await
    }
}

impl TokenAuthenticator {
    /// Reads a kube-apiserver static token file: `token,user,uid[,"group1,group2"]` per line.
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let err = |message: String| AuthError::TokenFile {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut tokens = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = csv_fields(line);
            if fields.len() < 3 {
                return Err(err(format!("line {}: want at least 3 columns (token,user,uid)", n + 1)));
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            tokens.insert(
                fields[0].clone(),
                UserInfo {
                    name: fields[1].clone(),
                    uid: fields[2].clone(),
                    groups,
                    extra: BTreeMap::new(),
                },
            );
        }
        Ok(TokenAuthenticator::Static(tokens))
    }

    async fn authenticate(&self, token: &str) -> Result<Option<UserInfo>, AuthError> {
        match self {
            TokenAuthenticator::None => Ok(None),
            TokenAuthenticator::Static(map) => Ok(map.get(token).cloned()),
            TokenAuthenticator::Review(r) => r.review(token).await,
        }
    }
}

/// Splits one CSV line, honouring double quotes (`""` is a quote inside quotes).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// The bearer token of `Authorization`, as k8s' bearertoken authenticator reads it.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let mut parts = auth.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// How long a connection's chain verification is reused before it is checked again (so a
/// certificate that expires during a long HTTP/2 connection stops being accepted).
const CHAIN_VERDICT_TTL: Duration = Duration::from_secs(10);

/// The outcome of checking a chain against the configured CAs (`None`: that CA is not set).
#[derive(Clone, Debug)]
struct Verdict {
    front_proxy: Option<Result<(), String>>,
    client_ca: Option<Result<(), String>>,
}

/// The client certificate chain of one TLS connection, with its subject read once and its
/// verification remembered: kube-apiserver sends every proxied user over a few long-lived
/// HTTP/2 connections, so re-verifying signatures on each request would be wasted work.
#[derive(Debug)]
pub struct PeerCerts {
    chain: Vec<CertificateDer<'static>>,
    cn: String,
    orgs: Vec<String>,
    memo: std::sync::Mutex<Option<(Arc<AuthConfig>, Instant, Verdict)>>,
}

impl PeerCerts {
    /// Wraps a non-empty chain (leaf first).
    pub fn new(chain: Vec<CertificateDer<'static>>) -> Option<Self> {
        let (cn, orgs) = subject_names(chain.first()?);
        Some(PeerCerts {
            chain,
            cn,
            orgs,
            memo: std::sync::Mutex::new(None),
        })
    }

    fn verdict(&self, cfg: &Arc<AuthConfig>) -> Verdict {
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at_cfg, at, v)) = memo.as_ref() {
            // Same configuration object (a CA rotation replaces it) and recent enough.
            if Arc::ptr_eq(at_cfg, cfg) && at.elapsed() < CHAIN_VERDICT_TTL {
                return v.clone();
            }
        }
        let check = |v: &ChainVerifier| v.verify(&self.chain).map_err(|e| e.to_string());
        let v = Verdict {
            front_proxy: cfg.request_header.as_ref().map(|rh| check(&rh.verifier)),
            client_ca: cfg.client_ca.as_ref().map(check),
        };
        *memo = Some((cfg.clone(), Instant::now(), v.clone()));
        v
    }
}

/// Authenticates one request. `peer` is the connection's client chain, if any.
pub async fn authenticate(
    cfg: &Arc<AuthConfig>,
    tokens: &TokenAuthenticator,
    peer: Option<&PeerCerts>,
    headers: &HeaderMap,
) -> Result<UserInfo, AuthError> {
    let mut errors: Vec<String> = Vec::new();
    if let Some(peer) = peer {
        let verdict = peer.verdict(cfg);
        if let (Some(rh), Some(outcome)) = (&cfg.request_header, &verdict.front_proxy) {
            match outcome {
                Ok(()) if rh.cn_allowed(&peer.cn) => {
                    if let Some(user) = rh.user_from_headers(headers) {
                        return Ok(user.authenticated());
                    }
                }
                Ok(()) => errors.push(format!(
                    "front-proxy client certificate CN {:?} is not allowed",
                    peer.cn
                )),
                Err(e) => errors.push(format!("front-proxy: verifying certificate failed: {e}")),
            }
        }
        match &verdict.client_ca {
            // As Kubernetes: a certificate without a common name names no user.
            Some(Ok(())) if peer.cn.is_empty() => {
                errors.push("client certificate: the common name (user name) is empty".to_string())
            }
            Some(Ok(())) => {
                return Ok(UserInfo {
                    name: peer.cn.clone(),
                    groups: peer.orgs.clone(),
                    ..Default::default()
                }
                .authenticated())
            }
            Some(Err(e)) => errors.push(format!("client certificate: verifying certificate failed: {e}")),
            None => {}
        }
    }
    if let Some(token) = bearer_token(headers) {
        match tokens.authenticate(token).await? {
            Some(user) => return Ok(user.authenticated()),
            None => errors.push("invalid bearer token".into()),
        }
    }
    if !errors.is_empty() {
        return Err(AuthError::Unauthorized(errors.join("; ")));
    }
    Ok(UserInfo::anonymous())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_keys_unescape_like_k8s() {
        assert_eq!(
            unescape_extra_key("authentication.kubernetes.io%2fcredential-id"),
            "authentication.kubernetes.io/credential-id"
        );
        assert_eq!(unescape_extra_key("Scopes"), "scopes");
        assert_eq!(unescape_extra_key("bad%zzkey"), "bad%zzkey");
        assert_eq!(unescape_extra_key("a%20b+c"), "a b+c");
    }

    #[test]
    fn csv_groups_are_quoted() {
        assert_eq!(
            csv_fields(r#"tok,alice,u1,"devs,ops""#),
            vec!["tok", "alice", "u1", "devs,ops"]
        );
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "bearer abc".parse().expect("header"));
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().expect("header"));
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn identity_headers_keep_utf8_and_skip_empty_groups() {
        let ca = crate::pki::generate_ca(
            "rh",
            crate::crd::KeyAlgorithm::EcdsaP256,
            crate::pki::DEFAULT_CA_VALIDITY,
            1_800_000_000,
        )
        .expect("ca");
        let rh = RequestHeaderConfig {
            verifier: crate::apiserver::tls::ChainVerifier::from_pem(ca.cert_pem.as_bytes()).expect("verifier"),
            allowed_names: vec![],
            username_headers: vec!["X-Remote-User".into()],
            uid_headers: vec![],
            group_headers: vec!["X-Remote-Group".into()],
            extra_prefixes: vec!["X-Remote-Extra-".into()],
        };
        let mut h = HeaderMap::new();
        let raw = |s: &str| http::HeaderValue::from_bytes(s.as_bytes()).expect("header");
        h.insert("x-remote-user", raw("José"));
        h.append("x-remote-group", raw("équipe"));
        h.append("x-remote-group", raw(""));
        h.append("x-remote-group", raw("ops"));
        h.insert("x-remote-extra-scopes", raw("lecture-écriture"));
        let u = rh.user_from_headers(&h).expect("a user");
        assert_eq!(u.name, "José");
        assert_eq!(u.groups, vec!["équipe", "ops"]);
        assert_eq!(u.extra.get("scopes"), Some(&vec!["lecture-écriture".to_string()]));
    }
}

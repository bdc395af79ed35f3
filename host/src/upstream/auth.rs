//! Authenticating to one upstream: which credential to present, the registry token flow
//! (Bearer challenges answered at the token endpoint, tokens cached per scope until they
//! expire), and turning a credential into an `Authorization` header.
//!
//! Secrets only ever leave this module inside header values; nothing here logs them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ociregistry_plugin_api::{Credential, CredentialKind, Secret};

use super::UpstreamError;
use crate::providers::ManagedCredential;

/// Where an upstream's credential comes from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// None configured: requests go anonymously (the token flow may still run).
    Anonymous,
    /// A fixed credential: user/password from config, or `auth.token.static`.
    Fixed(Credential),
    /// A provider plugin's credential, kept fresh by the scheduler.
    Managed(ManagedCredential),
}

impl CredentialSource {
    /// The credential to present now for a pull of `repository`, if any.
    pub async fn current(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<Option<Credential>, UpstreamError> {
        match self {
            CredentialSource::Anonymous => Ok(None),
            CredentialSource::Fixed(c) => Ok(Some(c.clone())),
            CredentialSource::Managed(m) => m
                .current_for(Some(repository))
                .await
                .map(Some)
                .map_err(|e| UpstreamError::NoCredential {
                    registry: registry.to_owned(),
                    reason: e.to_string(),
                }),
        }
    }

    /// What to tell a client whose pull the upstream refused with 401.
    pub fn rejection_hint(&self) -> String {
        match self {
            CredentialSource::Anonymous => "configure registries[].auth".to_owned(),
            CredentialSource::Fixed(_) => {
                "the credential configured in registries[].auth was rejected".to_owned()
            }
            CredentialSource::Managed(m) if !m.provider().is_empty() => format!(
                "the credential from provider \"{}\" was rejected (see `ociregistry providers --check`)",
                m.provider()
            ),
            CredentialSource::Managed(_) => "the provider's credential was rejected".to_owned(),
        }
    }

    /// After the upstream rejected `used` on a pull of `repository`: a fresher credential,
    /// if the source can get one.
    pub async fn refresh_after_rejection(
        &self,
        used: &Credential,
        repository: &str,
    ) -> Option<Credential> {
        match self {
            CredentialSource::Managed(m) => m
                .refresh_after_unauthorized_for(used, Some(repository))
                .await
                .ok(),
            _ => None,
        }
    }
}

/// Builds the `Authorization` value that presents `credential` directly to a registry (or
/// to its token endpoint's GET). None for an identity token: that one only goes to the
/// token endpoint, in an OAuth2 refresh-token POST ([`super::Upstream::fetch_token`]).
pub fn header_for(credential: &Credential) -> Option<String> {
    match &credential.kind {
        CredentialKind::Basic { user, secret } => Some(basic(user, secret)),
        CredentialKind::Bearer { token } => Some(format!("Bearer {}", token.expose())),
        _ => None,
    }
}

/// The identity (refresh) token of `credential`, when it is one.
fn identity_token(credential: &Credential) -> Option<&Secret> {
    match &credential.kind {
        CredentialKind::IdentityToken { token } => Some(token),
        _ => None,
    }
}

/// The OAuth2 `client_id` sent with refresh-token exchanges (docker sends `docker`; the
/// distribution token server only requires one to be present).
const OAUTH_CLIENT_ID: &str = "ociregistry";

fn basic(user: &str, secret: &Secret) -> String {
    let raw = format!("{user}:{}", secret.expose());
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// `auth.token.static`: Ociregistry pastes ECR's token as is, which is base64 of
/// `user:password`; such a value is used as Basic, anything else as a Bearer token.
pub fn static_credential(value: &Secret) -> Credential {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.expose().trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    match decoded.as_deref().and_then(|s| s.split_once(':')) {
        Some((user, password)) if !user.is_empty() => Credential::basic(user, password),
        _ => Credential::bearer(value.clone()),
    }
}

/// Bearer tokens obtained from token endpoints, per scope.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (Secret, Instant)>>,
}

/// Upper bound on cached scopes per upstream; beyond it the cache starts over.
const MAX_SCOPES: usize = 4096;
/// Tokens are dropped this long before the endpoint says they expire.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// What the distribution spec says to assume when `expires_in` is absent.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// The largest token endpoint answer read; reading stops there.
const MAX_TOKEN_RESPONSE: usize = 1024 * 1024;

/// Whether a registry's credential may go to this token realm: the realm is on the
/// registry's host, shares its registrable domain (public suffix list: `auth.docker.io` and
/// `registry-1.docker.io` do, `a.github.io` and `b.github.io` do not), or matches one of
/// `auth.realms`; and it is never an http realm of an https registry.
pub fn realm_may_receive_credential(
    registry: &reqwest::Url,
    realm: &reqwest::Url,
    realms: &[crate::config::HostPattern],
) -> bool {
    if realm.scheme() == "http" && registry.scheme() == "https" {
        return false;
    }
    let (Some(reg_host), Some(realm_host)) = (registry.host(), realm.host()) else {
        return false;
    };
    let (reg_host, realm_host) = (reg_host.to_owned(), realm_host.to_owned());
    if reg_host == realm_host {
        return true;
    }
    let realm_bare = match &realm_host {
        url::Host::Domain(d) => d.clone(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    if realms.iter().any(|p| p.matches(&realm_bare)) {
        return true;
    }
    match (&reg_host, &realm_host) {
        (url::Host::Domain(a), url::Host::Domain(b)) => {
            // A registrable domain needs a known suffix: `psl` answers for any name with a
            // dot, taking an unknown last label as the suffix, which is fine for both.
            match (psl::domain_str(a), psl::domain_str(b)) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            }
        }
        _ => false,
    }
}

impl TokenCache {
    /// A still-valid token for `scope`.
    pub fn get(&self, scope: &str) -> Option<Secret> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(scope)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(t, _)| t.clone())
    }

    fn put(&self, scope: &str, token: Secret, lifetime: Duration) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= MAX_SCOPES {
            let now = Instant::now();
            tokens.retain(|_, (_, until)| *until > now);
            if tokens.len() >= MAX_SCOPES {
                tokens.clear();
            }
        }
        let lifetime = lifetime
            .saturating_sub(EXPIRY_MARGIN)
            .max(Duration::from_secs(1));
        tokens.insert(scope.to_owned(), (token, Instant::now() + lifetime));
    }

    /// Forgets the token for `scope` (the upstream refused it).
    pub fn forget(&self, scope: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.remove(scope);
    }
}

impl super::Upstream {
    /// Runs the token flow: asks `realm` (for `service`) for a token for `scope`, presenting
    /// `credential` when one is configured, and puts it in this upstream's token cache.
    /// An identity token is exchanged as docker does: an OAuth2 `POST` to the realm with
    /// `grant_type=refresh_token`, the token, `service`, `scope` and a `client_id`.
    pub(super) async fn fetch_token(
        &self,
        ep: &super::Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        credential: Option<&Credential>,
    ) -> Result<(), UpstreamError> {
        let (client, registry, timeout) = (&ep.client, &self.name, self.timeout);
        let mut url = reqwest::Url::parse(realm).map_err(|_| {
            UpstreamError::Failed(format!("upstream {registry} sent an invalid token realm"))
        })?;
        let refresh_token = credential.and_then(identity_token);
        if refresh_token.is_none() {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        self.policy
            .check_hop(&url, &self.redirect_hosts, &ep.base)
            .map_err(|source| UpstreamError::RealmPolicy {
                registry: registry.clone(),
                source,
            })?;
        let may_receive = realm_may_receive_credential(&ep.base, &url, &self.realms);
        let mut req = match refresh_token {
            Some(token) if may_receive => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", token.expose())
                    .append_pair("client_id", OAUTH_CLIENT_ID)
                    .append_pair("scope", scope);
                if let Some(s) = service {
                    form.append_pair("service", s);
                }
                client
                    .post(url.clone())
                    .header(
                        http::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form.finish())
            }
            _ => client.get(url.clone()),
        };
        if let Some(c) = credential {
            if may_receive {
                if let Some(h) = header_for(c) {
                    req = req.header(http::header::AUTHORIZATION, h);
                }
            } else {
                tracing::warn!(
                    registry = %registry,
                    realm = %origin(&url),
                    "token realm is not on the registry's host or domain (nor listed under auth.realms): asking it for a token without the credential"
                );
            }
        }
        let resp = tokio::time::timeout(timeout, req.send())
            .await
            .map_err(|_| {
                UpstreamError::Failed(format!(
                    "token endpoint of {registry} ({}) did not answer within {}s",
                    origin(&url),
                    timeout.as_secs()
                ))
            })?
            .map_err(|e| match super::policy::refusal(&e) {
                Some(p) => UpstreamError::RealmPolicy {
                    registry: registry.clone(),
                    source: p.clone(),
                },
                None => UpstreamError::Failed(format!(
                    "token endpoint of {registry} ({}) unreachable: {}",
                    origin(&url),
                    super::describe(&e)
                )),
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(UpstreamError::TokenRefused {
                status: status.as_u16(),
                message: format!(
                    "token endpoint of {registry} ({}) answered {}",
                    origin(&url),
                    resp.status()
                ),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = read_capped(resp, timeout, MAX_TOKEN_RESPONSE)
            .await
            .map_err(|e| {
                UpstreamError::Failed(match e {
                    ReadError::TooLarge => {
                        format!("token endpoint of {registry} sent an oversized answer")
                    }
                    ReadError::Stalled => {
                        format!("token endpoint of {registry} stalled sending its answer")
                    }
                    ReadError::Transport(e) => {
                        format!("token endpoint of {registry}: {}", super::describe(&e))
                    }
                })
            })?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            UpstreamError::Failed(format!(
                "token endpoint of {registry} sent something that is not a token response"
            ))
        })?;
        let token = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                UpstreamError::Failed(format!("token endpoint of {registry} sent no token"))
            })?;
        let token = Secret::new(token);
        let lifetime = parsed
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        ep.tokens.put(scope, token, lifetime);
        Ok(())
    }
}

/// Why a capped body read stopped.
#[derive(Debug)]
enum ReadError {
    TooLarge,
    Stalled,
    Transport(reqwest::Error),
}

/// Reads a body chunk by chunk, stopping as soon as it passes `limit` bytes.
async fn read_capped(
    mut resp: reqwest::Response,
    timeout: Duration,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut buf = Vec::new();
    while let Some(chunk) = tokio::time::timeout(timeout, resp.chunk())
        .await
        .map_err(|_| ReadError::Stalled)?
        .map_err(ReadError::Transport)?
    {
        if buf.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// `scheme://host[:port]` of a URL, for messages (never the query, which may carry scopes).
fn origin(url: &reqwest::Url) -> String {
    let mut s = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(p) = url.port() {
        s.push_str(&format!(":{p}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_tokens() {
        let ecr_style = base64::engine::general_purpose::STANDARD.encode("AWS:secretpw");
        let c = static_credential(&Secret::new(ecr_style));
        assert_eq!(c, Credential::basic("AWS", "secretpw"));
        let c = static_credential(&Secret::new("opaque.jwt.token"));
        assert_eq!(c, Credential::bearer("opaque.jwt.token"));
    }

    #[test]
    fn basic_header() {
        let h = header_for(&Credential::basic("AWS", "pw"));
        assert_eq!(h.as_deref(), Some("Basic QVdTOnB3"));
        assert_eq!(header_for(&Credential::identity_token("r")), None);
    }

    #[test]
    fn realms_that_may_receive_the_credential() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        let ok = |reg: &str, realm: &str| realm_may_receive_credential(&u(reg), &u(realm), &[]);
        assert!(ok(
            "https://registry-1.docker.io",
            "https://auth.docker.io/token"
        ));
        assert!(ok("https://quay.io", "https://quay.io/v2/auth"));
        assert!(ok("https://ghcr.io", "https://ghcr.io/token"));
        assert!(ok("http://127.0.0.1:5000", "http://127.0.0.1:6000/token"));
        assert!(!ok("https://quay.io", "https://evil.com/token"));
        assert!(!ok("https://x.github.io", "https://y.github.io/token"));
        assert!(!ok("https://quay.io", "http://quay.io/token"));
        assert!(!ok("http://127.0.0.1:5000", "http://127.0.0.2:5000/token"));
        assert!(!ok(
            "https://a.example.com",
            "https://a.example.com.evil.net/t"
        ));
        let listed = [crate::config::HostPattern::parse("login.corp.example").unwrap()];
        assert!(realm_may_receive_credential(
            &u("https://registry.corp.example:8443"),
            &u("https://login.corp.example/token"),
            &listed
        ));
        assert!(!realm_may_receive_credential(
            &u("https://registry.other.example"),
            &u("https://login.corp2.example/token"),
            &listed
        ));
    }

    #[test]
    fn token_cache_expires() {
        let cache = TokenCache::default();
        cache.put("s", Secret::new("t"), Duration::from_secs(300));
        assert!(cache.get("s").is_some());
        cache.forget("s");
        assert!(cache.get("s").is_none());
    }
}

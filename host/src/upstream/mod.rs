//! Talking to upstream registries: which upstream a name means ([`Upstreams::resolve`]),
//! one HTTP client per configured registry (its TLS settings), and requests that carry the
//! right credential ([`auth`]) and answer the registry's challenges ([`challenge`]). It
//! stores nothing and decides nothing about caching (the mirror does); where credentials
//! come from is [`crate::providers`]'.
//!
//! A registry's content comes from its endpoints ([`Endpoint`]: the name itself, or the
//! `endpoints` of its entry, each with its own client, credential and [`breaker`]), tried in
//! order by [`Upstream::request_at`]; the name stays what the cache is keyed by. Rate-limit
//! headers are read off every answer ([`Upstream::budget_under_floor`]).
//!
//! Redirects (blob storage on another host) are followed here, not by reqwest: at most
//! [`MAX_REDIRECTS`] hops, each checked by the upstream [`policy`], never from https down to
//! http unless the registry is `scheme: http`, and without `Authorization` once a hop leaves
//! the original origin (scheme, host and port).

pub mod answer;
pub mod auth;
pub mod breaker;
pub mod calls;
pub mod challenge;
pub mod error;
pub mod peer;
pub mod policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;

use crate::config::{CredentialConfig, HostPattern, Scheme, Settings, TlsConfig};
use crate::oci::reference::RepoName;
use auth::{CredentialSource, TokenCache};
use breaker::{Admit, Breaker, RateLimit, State};
pub use error::{BodyError, Refusal, SetupProblem, Subject, UpstreamError};
use ociregistry_plugin_api::{Credential, Secret};
use policy::{Policy, PolicyError, PolicyResolver};

/// Where docker.io's registry API actually is.
use crate::oci::registry::DOCKER_HUB_API;
pub use crate::oci::registry::{DOCKER_HUB, canonical_name};
/// Transient upstream failures are retried this many times.
const MAX_RETRIES: u32 = 2;
/// First retry delay; each further one is four times longer (plus jitter).
const RETRY_BASE: Duration = Duration::from_millis(200);
/// At most this many unconfigured upstreams keep their token caches.
const MAX_ADHOC: usize = 256;
/// Redirect hops followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// The host a registry name is reached at (`docker.io` is `registry-1.docker.io`).
pub(crate) fn api_host(name: &str) -> String {
    if name == DOCKER_HUB {
        DOCKER_HUB_API.to_owned()
    } else {
        name.to_owned()
    }
}

/// Why one request (with its redirects) got no usable answer.
#[derive(Debug)]
enum SendError {
    /// The transport failed.
    Transport(reqwest::Error),
    /// The policy refused a host or address (before connecting, or in the resolver).
    Policy(PolicyError),
    /// More than [`MAX_REDIRECTS`] hops.
    TooManyRedirects,
    /// A hop from https to http of an https registry.
    Downgrade(String),
    /// A `Location` that is not an http(s) URL.
    BadLocation,
}

impl From<reqwest::Error> for SendError {
    fn from(e: reqwest::Error) -> Self {
        match policy::refusal(&e) {
            Some(p) => SendError::Policy(p.clone()),
            None => SendError::Transport(e),
        }
    }
}

/// One place a registry's content is fetched from: its address, client (TLS), credential
/// and token cache, and its circuit breaker.
#[derive(Debug)]
pub struct Endpoint {
    /// `scheme://host[:port]` as configured (shown in `/readyz` and metrics; no secret).
    pub url: String,
    base: reqwest::Url,
    client: reqwest::Client,
    credential: CredentialSource,
    tokens: TokenCache,
    /// One token fetch at a time: requests refused meanwhile use the token it brings.
    token_fetch: tokio::sync::Mutex<()>,
    scheme: Scheme,
    /// Skips it while it fails.
    pub breaker: Breaker,
    state_gauge: prometheus_client::metrics::gauge::Gauge,
}

/// One upstream registry and how to reach it.
#[derive(Debug)]
pub struct Upstream {
    /// Canonical name (`docker.io`, `127.0.0.1:5000`).
    pub name: String,
    /// Where its content comes from, in order (one: the name itself, unless `endpoints`).
    endpoints: Vec<Endpoint>,
    /// `endpoints` is configured: failing endpoints are skipped (the breaker); otherwise
    /// only a 429 holds requests back.
    listed_endpoints: bool,
    timeout: Duration,
    /// This registry's counters (requests, bytes received, errors).
    pub metrics: Arc<crate::metrics::RegistryMetrics>,
    policy: Arc<Policy>,
    /// `redirectHosts` of its registries entry.
    redirect_hosts: Vec<HostPattern>,
    /// `auth.realms` of its registries entry.
    realms: Vec<HostPattern>,
    /// Listed under `registries` (not an ad hoc name from a request).
    configured: bool,
    /// The last `ratelimit-remaining` it sent.
    rate: RateLimit,
    /// `rateLimit.revalidateFloor`.
    revalidate_floor: Option<u64>,
}

/// Reopens the half-open state for another probe when a probe's request goes away unanswered.
struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.abandon_probe();
        }
    }
}

/// What one endpoint's answer means for the breaker and for trying the next one.
enum Outcome {
    /// Use it.
    Answer,
    /// A 404 on an endpoint that is not the last: the next may have it (mirrors lag).
    NotHere,
    /// A failure (5xx, 429): the breaker opens; the next endpoint is tried.
    Failing {
        reason: String,
        rate_limited: bool,
        retry_after: Option<Duration>,
    },
}

impl Upstream {
    /// What to tell a client whose request got a 401 from the answer at `answered`: about
    /// the credential of the endpoint that answered.
    pub(crate) fn rejection_hint(&self, answered: &reqwest::Url) -> String {
        self.endpoints
            .iter()
            .find(|e| same_origin(answered, &e.base))
            .or(self.endpoints.first())
            .map(|e| e.credential.rejection_hint())
            .unwrap_or_default()
    }

    /// docker.io puts one-component names under `library/`.
    pub fn repo_path(&self, repo: &RepoName) -> RepoName {
        if self.name == DOCKER_HUB {
            repo.with_library_prefix()
        } else {
            repo.clone()
        }
    }

    /// Sends `method` to `/v2/<repo>/<path>` with the credential this upstream needs,
    /// answering one round of auth challenges. Returns the upstream's response whatever its
    /// status; transport failures become 502 naming the upstream.
    pub async fn request(
        &self,
        method: Method,
        repo: &RepoName,
        path: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.request_with(method, repo, path, accept, None).await
    }

    /// [`Upstream::request`] with a `Range: bytes=N-` header (resuming a blob).
    pub async fn request_with(
        &self,
        method: Method,
        repo: &RepoName,
        path: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.request_at(method, repo, path, accept, range_from)
            .await
            .map(|(resp, _)| resp)
    }

    /// [`Upstream::request_with`], also saying which endpoint answered (its URL, for a
    /// registry with `endpoints`).
    ///
    /// Endpoints are tried in order, each at most once: one whose breaker is open is
    /// skipped; one that fails (no answer, 5xx, 429) opens its breaker and the next is
    /// tried; a 404 on one that is not the last falls through to the next. A 429 is never
    /// retried here: its endpoint is held back until its `Retry-After`. When every endpoint
    /// is held back, the answer is a 429 (rate-limited) or 503 with the time left as
    /// `Retry-After`, without a request.
    pub async fn request_at(
        &self,
        method: Method,
        repo: &RepoName,
        path: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
    ) -> Result<(reqwest::Response, Option<String>), UpstreamError> {
        let n = self.endpoints.len();
        let mut last: Option<Result<reqwest::Response, UpstreamError>> = None;
        let mut held: Option<(Duration, bool)> = None;
        for (i, ep) in self.endpoints.iter().enumerate() {
            let is_last = i + 1 == n;
            let probe = match ep.breaker.admit() {
                Admit::Skip { wait, rate_limited } => {
                    let (w, r) = held.get_or_insert((wait, rate_limited));
                    if wait < *w {
                        *w = wait;
                    }
                    *r = *r && rate_limited;
                    continue;
                }
                Admit::Probe => {
                    ep.state_gauge.set(State::HalfOpen.gauge());
                    tracing::debug!(registry = %self.name, endpoint = %ep.url, "cool-down over; probing the endpoint");
                    true
                }
                Admit::Go => false,
            };
            let mut guard = ProbeGuard {
                breaker: &ep.breaker,
                armed: probe,
            };
            // With another endpoint to go to, a failure moves on at once.
            let retries = if self.listed_endpoints && !is_last {
                0
            } else {
                MAX_RETRIES
            };
            let result = self
                .request_on(ep, &method, repo, path, accept, range_from, retries)
                .await;
            let outcome = match &result {
                Ok(resp) => self.outcome(resp, is_last),
                Err(UpstreamError::Failed(reason)) if self.listed_endpoints => Outcome::Failing {
                    reason: reason.clone(),
                    rate_limited: false,
                    retry_after: None,
                },
                Err(_) => return result.map(|r| (r, None)),
            };
            guard.armed = false;
            match outcome {
                Outcome::Answer => {
                    self.succeeded(ep, probe);
                    let label = self.listed_endpoints.then(|| ep.url.clone());
                    return result.map(|r| (r, label));
                }
                Outcome::NotHere => {
                    self.succeeded(ep, probe);
                    tracing::debug!(registry = %self.name, endpoint = %ep.url, path, "not found on this endpoint; trying the next");
                }
                Outcome::Failing {
                    reason,
                    rate_limited,
                    retry_after,
                } => {
                    let wait = ep
                        .breaker
                        .failure(reason.clone(), rate_limited, retry_after);
                    ep.state_gauge.set(State::Open.gauge());
                    tracing::warn!(registry = %self.name, endpoint = %ep.url, %reason, cool_down_secs = wait.as_secs_f32(), "upstream endpoint failing; skipped until the cool-down ends");
                }
            }
            last = Some(result);
        }
        if let Some(last) = last {
            return last.map(|r| (r, None));
        }
        let (wait, rate_limited) = held.unwrap_or((Duration::ZERO, false));
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let (refusal, message) = if rate_limited {
            (
                Refusal::TooManyRequests,
                format!(
                    "upstream {} is rate-limiting this mirror; no request to it for {secs}s",
                    self.name
                ),
            )
        } else {
            (
                Refusal::Unavailable,
                format!(
                    "every endpoint of upstream {} is failing; the next try is in {secs}s",
                    self.name
                ),
            )
        };
        Err(UpstreamError::Refused {
            refusal,
            message,
            retry_after: Some(secs.to_string()),
        })
    }

    fn succeeded(&self, ep: &Endpoint, probe: bool) {
        if probe || ep.breaker.status().consecutive_failures > 0 {
            tracing::info!(registry = %self.name, endpoint = %ep.url, "upstream endpoint answers again; breaker closed");
        }
        ep.breaker.success();
        ep.state_gauge.set(State::Closed.gauge());
    }

    /// What an endpoint's answer means (see [`Upstream::request_at`]).
    fn outcome(&self, resp: &reqwest::Response, is_last: bool) -> Outcome {
        let status = resp.status().as_u16();
        let retry_after = || {
            resp.headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(breaker::parse_retry_after)
        };
        match status {
            429 => Outcome::Failing {
                reason: "answered 429 Too Many Requests".into(),
                rate_limited: true,
                retry_after: retry_after(),
            },
            500..=599 if self.listed_endpoints => Outcome::Failing {
                reason: format!("answered {}", resp.status()),
                rate_limited: false,
                retry_after: if status == 503 { retry_after() } else { None },
            },
            404 if !is_last => Outcome::NotHere,
            _ => Outcome::Answer,
        }
    }

    /// One endpoint: the request with its credential, answering one round of challenges.
    #[allow(clippy::too_many_arguments)]
    async fn request_on(
        &self,
        ep: &Endpoint,
        method: &Method,
        repo: &RepoName,
        path: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
        retries: u32,
    ) -> Result<reqwest::Response, UpstreamError> {
        let repo = self.repo_path(repo);
        let url = format!(
            "{}/v2/{}/{}",
            ep.base.as_str().trim_end_matches('/'),
            repo,
            path
        );
        let scope = format!("repository:{repo}:pull");
        let repo_name = repo.to_string();
        let mut credential = ep.credential.current(&self.name, &repo_name).await?;
        let mut refreshed = false;
        // At most: plain try, token fetch + retry, credential refresh + retry.
        for _ in 0..4 {
            let token = ep.tokens.get(&scope);
            let direct = credential.as_ref().and_then(auth::header_for);
            let sent_credential = token.is_none() && direct.is_some();
            let mut req = ep.client.request(method.clone(), &url);
            if let Some(t) = &token {
                req = req.header(
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", t.expose()),
                );
            } else if let Some(h) = direct {
                req = req.header(http::header::AUTHORIZATION, h);
            }
            if let Some(a) = accept {
                req = req.header(http::header::ACCEPT, a);
            }
            if let Some(from) = range_from {
                req = req.header(http::header::RANGE, format!("bytes={from}-"));
            }
            let resp = self.send(ep, req, retries).await?;
            if resp.status() != http::StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            // A 401 from where a redirect led (blob storage) is that host's business: passed
            // on as is, and never a reason to send a credential anywhere.
            if !same_origin(resp.url(), &ep.base) {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(challenge::parse);
            match challenge {
                Some(challenge::Challenge::Bearer { realm, service, .. }) => {
                    let _fetching = ep.token_fetch.lock().await;
                    // Another request fetched a token while this one waited: use it.
                    let cached = ep.tokens.get(&scope);
                    if cached.as_ref().map(Secret::expose) != token.as_ref().map(Secret::expose)
                        && cached.is_some()
                    {
                        continue;
                    }
                    if token.is_some() {
                        ep.tokens.forget(&scope);
                    }
                    let fetched = self
                        .fetch_token(ep, &realm, service.as_deref(), &scope, credential.as_ref())
                        .await;
                    match fetched {
                        Ok(_) if token.is_none() => continue,
                        // A fresh token was refused too: pass the 401 on.
                        Ok(_) => return Ok(resp),
                        Err(e @ UpstreamError::TokenRefused { status: 401, .. }) if !refreshed => {
                            match self.refreshed(ep, credential.as_ref(), &repo_name).await {
                                Some(c) => {
                                    credential = Some(c);
                                    refreshed = true;
                                }
                                None => return Err(e),
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                Some(challenge::Challenge::Basic) if sent_credential && !refreshed => {
                    match self.refreshed(ep, credential.as_ref(), &repo_name).await {
                        Some(c) => {
                            credential = Some(c);
                            refreshed = true;
                        }
                        None => return Ok(resp),
                    }
                }
                _ => return Ok(resp),
            }
        }
        Err(UpstreamError::Failed(format!(
            "upstream {} kept refusing credentials",
            self.name
        )))
    }

    async fn refreshed(
        &self,
        ep: &Endpoint,
        used: Option<&Credential>,
        repository: &str,
    ) -> Option<Credential> {
        let used = used?;
        let fresh = ep
            .credential
            .refresh_after_rejection(used, repository)
            .await?;
        tracing::info!(registry = %self.name, "upstream refused the credential; retrying with a refreshed one");
        Some(fresh)
    }

    /// Sends with the answer timeout, retrying transient failures (connection refused or
    /// reset before an answer, 500/502/503/504) a bounded number of times with backoff.
    /// Only body-less requests are sent here, so a retry is always safe.
    async fn send(
        &self,
        ep: &Endpoint,
        req: reqwest::RequestBuilder,
        retries: u32,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut attempt = 0u32;
        loop {
            let this = req
                .try_clone()
                .ok_or_else(|| UpstreamError::Internal("request cannot be sent".into()))?;
            self.metrics.upstream_requests.inc();
            let result = tokio::time::timeout(self.timeout, self.follow(ep, this)).await;
            let failed = match &result {
                Ok(Ok(r)) => r.status().is_server_error() || r.status() == 429,
                _ => true,
            };
            if failed {
                self.metrics.upstream_errors.inc();
            }
            let transient = match &result {
                Ok(Err(SendError::Transport(e))) => e.is_connect() || e.is_request(),
                Ok(Ok(r)) => matches!(r.status().as_u16(), 500 | 502 | 503 | 504),
                Ok(Err(_)) | Err(_) => false,
            };
            if transient && attempt < retries {
                attempt += 1;
                self.metrics.upstream_retries.inc();
                let backoff = RETRY_BASE * 4u32.pow(attempt - 1);
                let jitter =
                    Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
                tracing::debug!(registry = %self.name, attempt, "transient upstream failure; retrying");
                tokio::time::sleep(backoff + jitter).await;
                continue;
            }
            return match result {
                Err(_) => Err(UpstreamError::Failed(format!(
                    "upstream {} did not answer within {}s",
                    self.name,
                    self.timeout.as_secs()
                ))),
                Ok(Err(e)) => Err(self.send_error(e)),
                Ok(Ok(resp)) => Ok(resp),
            };
        }
    }

    fn send_error(&self, e: SendError) -> UpstreamError {
        match e {
            SendError::Transport(e) => {
                UpstreamError::Failed(format!("upstream {}: {}", self.name, describe(&e)))
            }
            SendError::Policy(p) => UpstreamError::Policy(p),
            SendError::TooManyRedirects => UpstreamError::Failed(format!(
                "upstream {} redirected more than {MAX_REDIRECTS} times; refused",
                self.name
            )),
            SendError::Downgrade(to) => UpstreamError::Failed(format!(
                "upstream {} redirected from https to plain http ({to}); refused (only registries with scheme: http may use http)",
                self.name
            )),
            SendError::BadLocation => UpstreamError::Failed(format!(
                "upstream {} sent a redirect without a usable http(s) Location",
                self.name
            )),
        }
    }

    /// Sends one request and follows its redirects: each hop is checked by the policy
    /// (deny patterns, address rules for IP literals; the resolver checks the others), may
    /// not go from https to http unless this registry is `scheme: http`, keeps the method,
    /// `Accept` and `Range`, and loses `Authorization` once it leaves the first origin.
    async fn follow(
        &self,
        ep: &Endpoint,
        first: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SendError> {
        let mut req = first.build()?;
        let origin = req.url().clone();
        let mut hops = 0;
        loop {
            let template = req.try_clone();
            let resp = ep.client.execute(req).await?;
            self.observe_rate_limit(&resp);
            let redirect = matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308);
            let location = resp.headers().get(http::header::LOCATION).cloned();
            let (true, Some(location), Some(mut next)) = (redirect, location, template) else {
                return Ok(resp);
            };
            if hops == MAX_REDIRECTS {
                return Err(SendError::TooManyRedirects);
            }
            hops += 1;
            let url = location
                .to_str()
                .ok()
                .and_then(|l| resp.url().join(l).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or(SendError::BadLocation)?;
            if url.scheme() == "http" && ep.scheme == Scheme::Https {
                return Err(SendError::Downgrade(format!(
                    "http://{}",
                    url.host_str().unwrap_or("")
                )));
            }
            self.policy
                .check_hop(&url, &self.redirect_hosts, &ep.base)
                .map_err(SendError::Policy)?;
            if !same_origin(&url, &origin) {
                for h in [
                    http::header::AUTHORIZATION,
                    http::header::COOKIE,
                    http::header::PROXY_AUTHORIZATION,
                ] {
                    next.headers_mut().remove(h);
                }
            }
            tracing::debug!(registry = %self.name, hop = hops, to = %url.host_str().unwrap_or(""), "following upstream redirect");
            *next.url_mut() = url;
            req = next;
        }
    }

    /// Reads `ratelimit-limit` / `ratelimit-remaining` (Docker Hub) off an answer.
    fn observe_rate_limit(&self, resp: &reqwest::Response) {
        let read = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(breaker::parse_ratelimit)
        };
        let remaining = read("ratelimit-remaining");
        let limit = read("ratelimit-limit");
        if remaining.is_none() && limit.is_none() {
            return;
        }
        if let Some((n, window)) = remaining {
            self.rate.observe(n, window);
        }
        crate::metrics::global().ratelimit(
            &self.metrics.label,
            limit.map(|(n, _)| n),
            remaining.map(|(n, _)| n),
        );
    }

    /// The remaining rate-limit budget, when it is under `rateLimit.revalidateFloor`: then
    /// tags are not revalidated (cached ones are served).
    pub fn budget_under_floor(&self) -> Option<(u64, u64)> {
        let floor = self.revalidate_floor?;
        let remaining = self.rate.remaining()?;
        (remaining < floor).then_some((remaining, floor))
    }

    /// Each endpoint's URL and breaker state, for a registry with `endpoints`.
    pub fn endpoint_status(&self) -> Vec<(String, breaker::Status)> {
        if !self.listed_endpoints {
            return Vec::new();
        }
        self.endpoints
            .iter()
            .map(|e| (e.url.clone(), e.breaker.status()))
            .collect()
    }

    /// The answer timeout for this upstream (headers, or the next chunk of a body).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether this registry is listed under `registries` (not an ad hoc name).
    pub fn is_configured(&self) -> bool {
        self.configured
    }
}

/// A transport error in one line, with its root cause and, for TLS trouble, the config key
/// that usually fixes it.
pub fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut chain = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    let root = chain.last().cloned().unwrap_or_else(|| e.to_string());
    let all = chain.join(" ").to_ascii_lowercase();
    if all.contains("certificate")
        || all.contains("unknownissuer")
        || all.contains("notvalidforname")
    {
        format!(
            "TLS: server certificate not accepted ({root}); trust its CA with tls.ca, or set tls.insecureSkipVerify"
        )
    } else if all.contains("handshake")
        || all.contains("alert")
        || all.contains("connection was not ready")
    {
        format!(
            "TLS handshake failed ({root}); if it requires a client certificate, set tls.cert and tls.key"
        )
    } else if e.is_connect() {
        format!("cannot connect ({root})")
    } else if e.is_timeout() {
        format!("timed out ({root})")
    } else {
        format!("request failed ({root})")
    }
}

/// Same scheme, host and port.
fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Why an upstream could not be set up at start.
#[derive(Debug, thiserror::Error)]
#[error("registries entry {registry}: {problem}")]
pub struct SetupError {
    registry: String,
    problem: SetupProblem,
}

/// All upstreams: the configured ones, and ad hoc ones for names seen in requests.
#[derive(Debug)]
pub struct Upstreams {
    configured: HashMap<String, Arc<Upstream>>,
    adhoc: Mutex<HashMap<String, Arc<Upstream>>>,
    default_client: reqwest::Client,
    timeout: Duration,
    policy: Arc<Policy>,
}

impl Upstreams {
    /// Builds one client per configured registry. `managed` supplies the credentials of
    /// registries whose auth comes from a provider plugin.
    pub fn new(
        settings: &Settings,
        mut managed: HashMap<String, crate::providers::ManagedCredential>,
    ) -> Result<Self, SetupError> {
        let timeout = settings.pull_timeout;
        let policy = Arc::new(Policy::new(settings));
        // One resolver for every client: the address rules hold for each connection.
        let resolver = Arc::new(PolicyResolver::new(policy.clone()));
        let default_client =
            build_client(&TlsConfig::default(), timeout, &resolver).map_err(|problem| {
                SetupError {
                    registry: "(default)".into(),
                    problem,
                }
            })?;
        crate::metrics::global()
            .preregister(settings.registries.iter().map(|r| canonical_name(&r.name)));
        let mut configured = HashMap::new();
        for r in &settings.registries {
            let name = canonical_name(&r.name);
            let setup = |problem| SetupError {
                registry: r.name.clone(),
                problem,
            };
            let client_for = |tls: &TlsConfig| {
                if tls.ca.is_none() && tls.cert.is_none() && !tls.insecure_skip_verify {
                    Ok(default_client.clone())
                } else {
                    build_client(tls, timeout, &resolver)
                }
            };
            // The entry's provider credential is shared by the endpoints that use the
            // entry's auth.
            let provider = match &r.credential {
                CredentialConfig::Provider { .. } => match managed.remove(&r.name) {
                    Some(m) => Some(m),
                    None => return Err(setup(SetupProblem::NoProvider)),
                },
                _ => None,
            };
            let source_of = |c: &CredentialConfig| -> Result<CredentialSource, SetupProblem> {
                Ok(match c {
                    CredentialConfig::None => CredentialSource::Anonymous,
                    CredentialConfig::Basic { user, password } => {
                        CredentialSource::Fixed(Credential::basic(user.clone(), password.clone()))
                    }
                    CredentialConfig::Static(s) => {
                        CredentialSource::Fixed(auth::static_credential(s))
                    }
                    CredentialConfig::Provider { .. } => match &provider {
                        Some(m) => CredentialSource::Managed(m.clone()),
                        None => return Err(SetupProblem::NoProvider),
                    },
                })
            };
            let mut endpoints = Vec::new();
            if r.endpoints.is_empty() {
                let base = format!("{}://{}", r.scheme, api_host(name));
                endpoints.push(
                    endpoint(
                        name,
                        &base,
                        r.scheme,
                        client_for(&r.tls).map_err(setup)?,
                        source_of(&r.credential).map_err(setup)?,
                        r.breaker,
                        false,
                    )
                    .map_err(setup)?,
                );
            } else {
                for e in &r.endpoints {
                    endpoints.push(
                        endpoint(
                            name,
                            &e.url,
                            e.scheme,
                            client_for(&e.tls).map_err(setup)?,
                            source_of(&e.credential).map_err(setup)?,
                            r.breaker,
                            true,
                        )
                        .map_err(setup)?,
                    );
                }
            }
            configured.insert(
                name.to_owned(),
                Arc::new(Upstream {
                    name: name.to_owned(),
                    endpoints,
                    listed_endpoints: !r.endpoints.is_empty(),
                    timeout,
                    metrics: crate::metrics::global().registry(name),
                    policy: policy.clone(),
                    redirect_hosts: r.redirect_hosts.clone(),
                    realms: r.realms.clone(),
                    configured: true,
                    rate: RateLimit::default(),
                    revalidate_floor: r.revalidate_floor,
                }),
            );
        }
        Ok(Upstreams {
            configured,
            adhoc: Mutex::new(HashMap::new()),
            default_client,
            timeout,
            policy,
        })
    }

    /// Each configured registry with `endpoints`: its endpoints' URLs and breaker states.
    pub fn endpoint_status(&self) -> HashMap<String, Vec<(String, breaker::Status)>> {
        self.configured
            .iter()
            .filter(|(_, u)| u.listed_endpoints)
            .map(|(name, u)| (name.clone(), u.endpoint_status()))
            .collect()
    }

    /// The upstream for a registry name as it appeared in a request (validated host), if the
    /// upstream policy lets clients name it; nothing is contacted here.
    pub fn resolve(&self, registry: &str) -> Result<Arc<Upstream>, PolicyError> {
        let name = canonical_name(registry);
        let scheme = self
            .configured
            .get(name)
            .and_then(|u| u.endpoints.first())
            .map_or(Scheme::Https, |e| e.scheme);
        self.policy.check_named(name, scheme)?;
        if let Some(u) = self.configured.get(name) {
            return Ok(u.clone());
        }
        let mut adhoc = self.adhoc.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = adhoc.get(name) {
            return Ok(u.clone());
        }
        if adhoc.len() >= MAX_ADHOC {
            adhoc.clear();
        }
        let u = upstream(
            name,
            Scheme::Https,
            self.default_client.clone(),
            CredentialSource::Anonymous,
            self.timeout,
            self.policy.clone(),
        )
        .map_err(|_| PolicyError::Unusable {
            host: name.to_owned(),
        })?;
        let u = Arc::new(u);
        adhoc.insert(name.to_owned(), u.clone());
        Ok(u)
    }
}

fn upstream(
    name: &str,
    scheme: Scheme,
    client: reqwest::Client,
    credential: CredentialSource,
    timeout: Duration,
    policy: Arc<Policy>,
) -> Result<Upstream, SetupProblem> {
    let base = format!("{scheme}://{}", api_host(name));
    let ep = endpoint(
        name,
        &base,
        scheme,
        client,
        credential,
        crate::config::BreakerSettings::default(),
        false,
    )?;
    Ok(Upstream {
        name: name.to_owned(),
        endpoints: vec![ep],
        listed_endpoints: false,
        timeout,
        metrics: crate::metrics::global().registry(name),
        policy,
        redirect_hosts: Vec::new(),
        realms: Vec::new(),
        configured: false,
        rate: RateLimit::default(),
        revalidate_floor: None,
    })
}

/// One endpoint at `base` (`scheme://host[:port]`); `listed` ones get a state gauge.
fn endpoint(
    registry: &str,
    base: &str,
    scheme: Scheme,
    client: reqwest::Client,
    credential: CredentialSource,
    breaker: crate::config::BreakerSettings,
    listed: bool,
) -> Result<Endpoint, SetupProblem> {
    let url = reqwest::Url::parse(base)?;
    let state_gauge = if listed {
        crate::metrics::global().endpoint_state(registry, base)
    } else {
        prometheus_client::metrics::gauge::Gauge::default()
    };
    Ok(Endpoint {
        url: base.to_owned(),
        base: url,
        client,
        credential,
        tokens: TokenCache::default(),
        token_fetch: tokio::sync::Mutex::new(()),
        scheme,
        breaker: Breaker::new(breaker),
        state_gauge,
    })
}

/// A client with this registry's TLS settings, the process's policy resolver, and no
/// redirect following of its own ([`Upstream::follow`] does that).
fn build_client(
    tls: &TlsConfig,
    timeout: Duration,
    resolver: &Arc<PolicyResolver>,
) -> Result<reqwest::Client, SetupProblem> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("ociregistry/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(resolver.clone())
        .connect_timeout(timeout.min(Duration::from_secs(30)))
        .read_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90));
    if let Some(ca) = &tls.ca {
        let pem = std::fs::read(&ca.0).map_err(|source| SetupProblem::Read {
            key: "tls.ca",
            path: ca.0.clone(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| SetupProblem::NotPem {
                path: ca.0.clone(),
                source,
            })?;
        if certs.is_empty() {
            return Err(SetupProblem::NoCertificate { path: ca.0.clone() });
        }
        b = b.tls_certs_merge(certs);
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        let read = |key: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| SetupProblem::Read {
                key,
                path: path.to_owned(),
                source,
            })
        };
        let mut pem = read("tls.cert", &cert.0)?;
        pem.push(b'\n');
        pem.extend(read("tls.key", &key.0)?);
        let id = reqwest::Identity::from_pem(&pem).map_err(SetupProblem::Identity)?;
        b = b.identity(id);
    }
    if tls.insecure_skip_verify {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| SetupProblem::Client(describe(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_name("quay.io:443"), "quay.io");
        assert_eq!(canonical_name("quay.io"), "quay.io");
        assert_eq!(canonical_name("quay.io:4430"), "quay.io:4430");
        assert_eq!(canonical_name("index.docker.io:443"), DOCKER_HUB);
        assert_eq!(canonical_name("registry-1.docker.io"), DOCKER_HUB);
        assert_eq!(canonical_name("[::1]:443"), "[::1]");
    }
}

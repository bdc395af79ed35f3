//! `/healthz` (liveness) and `/readyz` (readiness with each configured registry's
//! credential state and, for one with `endpoints`, each endpoint's breaker).
//!
//! The readiness rule: **503 only for local faults** — the pull listener is not accepting
//! (not yet started, or stopping) or the cache directory is not writable. A registry whose
//! provider credential is failing (or stopped) does not make the mirror unready: it still
//! serves everything cached, and taking it out of rotation would not fix the provider.
//! Instead the answer stays 200 with `"status": "degraded"`, `"degraded": true` and the
//! registry's state, last error (never a secret) and its kind (`lastErrorKind`:
//! `invalid_options`, `failed`, `panicked`, `timed_out` or `hung`) in `registries`. A
//! storage backend beyond the local disk (a bucket) that cannot be reached is reported the
//! same way (`checks.storage`, degraded): the local copies are still served. So is an
//! upstream endpoint (`registries[].endpoints`) whose circuit breaker is not closed: its
//! state, failures and last error are listed under the registry's `endpoints`.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::config::{CredentialConfig, Settings};
use crate::providers::ManagedCredential;
use crate::providers::scheduler::CredentialState;

/// Longest error message shown per registry.
const MAX_ERROR_CHARS: usize = 500;
/// Longest wait for the cache-writable probe.
const WRITE_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the cache directory failed the readiness write probe.
#[derive(Debug, thiserror::Error)]
pub enum CacheProbeError {
    /// The probe file could not be written.
    #[error("cannot write to the cache directory: {0}")]
    Write(#[source] std::io::Error),
    /// The probe's blocking task failed.
    #[error("cache write probe failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The probe did not finish in time.
    #[error("cache write probe did not finish within {}s", .0.as_secs())]
    TimedOut(Duration),
}

/// What readiness found of the storage backend.
#[derive(Debug, Clone)]
pub struct StorageState {
    /// `filesystem`, `s3`.
    pub backend: &'static str,
    /// Why the backend beyond the local disk could not be reached, if it could not.
    pub error: Option<String>,
}

/// Asks the store whether its backend answers, bounded by the probe timeout.
pub async fn storage_state(store: &dyn crate::store::Store) -> StorageState {
    let error = match tokio::time::timeout(WRITE_PROBE_TIMEOUT, store.check_remote()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "no answer within {}s",
            WRITE_PROBE_TIMEOUT.as_secs()
        )),
    };
    StorageState {
        backend: store.kind(),
        error,
    }
}

/// A configured registry and where its credential comes from.
#[derive(Debug, Clone)]
pub struct RegistryCredential {
    /// Registry name as configured.
    pub name: String,
    /// `none`, `basic`, `static` or `provider`.
    pub kind: &'static str,
    /// The provider's name, for `provider`.
    pub provider: Option<String>,
    /// The refreshed credential, for `provider`.
    pub managed: Option<ManagedCredential>,
}

/// One entry per configured registry, in config order.
pub fn credentials(
    settings: &Settings,
    managed: &HashMap<String, ManagedCredential>,
) -> Vec<RegistryCredential> {
    settings
        .registries
        .iter()
        .map(|r| {
            let (kind, provider) = match &r.credential {
                CredentialConfig::None => ("none", None),
                CredentialConfig::Basic { .. } => ("basic", None),
                CredentialConfig::Static(_) => ("static", None),
                CredentialConfig::Provider { provider, .. } => ("provider", Some(provider.clone())),
            };
            RegistryCredential {
                name: r.name.clone(),
                kind,
                provider,
                managed: managed.get(&r.name).cloned(),
            }
        })
        .collect()
}

/// The readiness answer: status code and JSON body.
pub fn readiness(
    serving: bool,
    cache: &Result<(), CacheProbeError>,
    storage: &StorageState,
    registries: &[RegistryCredential],
    endpoints: &HashMap<String, Vec<(String, crate::upstream::breaker::Status)>>,
) -> (u16, Value) {
    let mut degraded = storage.error.is_some();
    let regs: Vec<Value> = registries
        .iter()
        .map(|r| {
            let mut v = json!({ "name": r.name, "credential": r.kind });
            if let Some(eps) = endpoints.get(&r.name) {
                let shown: Vec<Value> = eps
                    .iter()
                    .map(|(url, st)| {
                        let mut e = json!({
                            "url": url,
                            "state": st.state.as_str(),
                            "consecutiveFailures": st.consecutive_failures,
                        });
                        if let Some(s) = st.retry_in {
                            e["retryInSeconds"] = json!(s);
                        }
                        if let Some(err) = &st.last_error {
                            e["lastError"] =
                                json!(err.chars().take(MAX_ERROR_CHARS).collect::<String>());
                        }
                        e
                    })
                    .collect();
                // Content still comes from the others (or from the cache): degraded, ready.
                if eps
                    .iter()
                    .any(|(_, st)| st.state != crate::upstream::breaker::State::Closed)
                {
                    degraded = true;
                }
                v["endpoints"] = json!(shown);
            }
            if let Some(p) = &r.provider {
                v["provider"] = json!(p);
            }
            if let Some(m) = &r.managed {
                let st = m.status();
                if matches!(
                    st.state,
                    CredentialState::Failing | CredentialState::Stopped
                ) {
                    degraded = true;
                }
                v["state"] = json!(st.state.to_string());
                v["usable"] = json!(st.usable);
                v["refreshes"] = json!(st.refreshes);
                v["failures"] = json!(st.failures);
                v["consecutiveFailures"] = json!(st.consecutive_failures);
                if let Some(e) = &st.last_error {
                    v["lastError"] = json!(e.chars().take(MAX_ERROR_CHARS).collect::<String>());
                }
                if let Some(kind) = st.last_error_kind {
                    v["lastErrorKind"] = json!(kind.as_str());
                }
                if let Some(at) = st.expires_at.filter(|_| !st.expiry_ignored) {
                    v["expiresAt"] = json!(crate::timefmt::format_system_time(at));
                    v["expiresInSeconds"] = json!(seconds_until(at));
                }
                if st.expiry_ignored {
                    // Flagged rather than reported as a plain valid credential.
                    v["expiryIgnored"] = json!(true);
                    v["warning"] = json!(
                        "the provider's expiry was already past (or too close) when fetched: it is ignored and the credential is refreshed every `expiry`"
                    );
                }
            } else if r.kind == "provider" {
                v["state"] = json!("pending");
            }
            v
        })
        .collect();
    let cache_ok = cache.is_ok();
    let ready = serving && cache_ok;
    let status = match (ready, degraded) {
        (false, _) => "unready",
        (true, true) => "degraded",
        (true, false) => "ready",
    };
    let mut checks = json!({ "pullListener": serving, "cacheWritable": cache_ok });
    if let Err(e) = cache {
        checks["cacheError"] = json!(e.to_string());
    }
    checks["storage"] = json!({
        "backend": storage.backend,
        "reachable": storage.error.is_none(),
    });
    if let Some(e) = &storage.error {
        checks["storage"]["error"] = json!(e.chars().take(MAX_ERROR_CHARS).collect::<String>());
    }
    let body = json!({
        "status": status,
        "ready": ready,
        "degraded": degraded,
        "checks": checks,
        "registries": regs,
    });
    (if ready { 200 } else { 503 }, body)
}

/// Seconds from now until `at` (negative when past).
pub fn seconds_until(at: SystemTime) -> i64 {
    match at.duration_since(SystemTime::now()) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Whether a file can be created, written and removed in the cache's `tmp/` (bounded).
pub async fn cache_writable(root: &Path) -> Result<(), CacheProbeError> {
    let root = root.to_owned();
    let probe = tokio::task::spawn_blocking(move || crate::store::probe_write(&root));
    match tokio::time::timeout(WRITE_PROBE_TIMEOUT, probe).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(CacheProbeError::Write(e)),
        Ok(Err(e)) => Err(CacheProbeError::Task(e)),
        Err(_) => Err(CacheProbeError::TimedOut(WRITE_PROBE_TIMEOUT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FS: StorageState = StorageState {
        backend: "filesystem",
        error: None,
    };

    fn reg(kind: &'static str) -> RegistryCredential {
        RegistryCredential {
            name: format!("{kind}.example"),
            kind,
            provider: None,
            managed: None,
        }
    }

    #[test]
    fn local_faults_make_it_unready() {
        let regs = [reg("none"), reg("basic")];
        let (code, body) = readiness(true, &Ok(()), &FS, &regs, &HashMap::new());
        assert_eq!(code, 200);
        assert_eq!(body["status"], "ready");
        assert_eq!(body["registries"][1]["credential"], "basic");
        let (code, body) = readiness(false, &Ok(()), &FS, &regs, &HashMap::new());
        assert_eq!((code, body["ready"].as_bool()), (503, Some(false)));
        let read_only = CacheProbeError::Write(std::io::Error::other("read-only"));
        let (code, body) = readiness(true, &Err(read_only), &FS, &regs, &HashMap::new());
        assert_eq!(code, 503);
        assert_eq!(
            body["checks"]["cacheError"],
            "cannot write to the cache directory: read-only"
        );
    }

    #[test]
    fn an_unreachable_bucket_degrades_but_does_not_unready() {
        let bucket = StorageState {
            backend: "s3",
            error: Some("bucket mirror-cache at http://127.0.0.1:9: connection refused".into()),
        };
        let (code, body) = readiness(true, &Ok(()), &bucket, &[reg("none")], &HashMap::new());
        assert_eq!(code, 200, "local copies are still served");
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["checks"]["storage"]["backend"], "s3");
        assert_eq!(body["checks"]["storage"]["reachable"], false);
        assert!(
            body["checks"]["storage"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("connection refused"))
        );
        let (_, body) = readiness(true, &Ok(()), &FS, &[reg("none")], &HashMap::new());
        assert_eq!(body["checks"]["storage"]["reachable"], true);
    }

    #[test]
    fn an_open_endpoint_degrades_and_is_listed() {
        use crate::upstream::breaker::{Breaker, State};
        let b = Breaker::new(crate::config::BreakerSettings::default());
        b.failure("upstream r.example: cannot connect".into(), false, None);
        let open = b.status();
        assert_eq!(open.state, State::Open);
        let closed = Breaker::new(crate::config::BreakerSettings::default()).status();
        let mut eps = HashMap::new();
        eps.insert(
            "none.example".to_owned(),
            vec![
                ("https://a.example".to_owned(), open),
                ("https://b.example".to_owned(), closed),
            ],
        );
        let (code, body) = readiness(true, &Ok(()), &FS, &[reg("none")], &eps);
        assert_eq!((code, &body["status"]), (200, &json!("degraded")));
        let listed = &body["registries"][0]["endpoints"];
        assert_eq!(listed[0]["url"], "https://a.example");
        assert_eq!(listed[0]["state"], "open");
        assert_eq!(listed[0]["consecutiveFailures"], 1);
        assert!(listed[0]["retryInSeconds"].as_u64().is_some_and(|s| s >= 1));
        assert!(
            listed[0]["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("cannot connect"))
        );
        assert_eq!(listed[1]["state"], "closed");
    }

    struct Refused;

    impl crate::providers::CredentialFetcher for Refused {
        fn fetch(
            &self,
        ) -> Result<ociregistry_plugin_api::Credential, crate::providers::ProviderError> {
            Err(crate::providers::ProviderError::new(
                "fixture",
                crate::providers::ProviderErrorKind::InvalidOptions,
                "region is not set",
            ))
        }
    }

    #[tokio::test]
    async fn a_failing_provider_is_shown_with_its_error_kind() {
        let managed = ManagedCredential::spawn(
            "prov.example".into(),
            std::sync::Arc::new(Refused),
            crate::providers::Schedule::default(),
        );
        assert!(managed.current().await.is_err());
        let regs = [RegistryCredential {
            name: "prov.example".into(),
            kind: "provider",
            provider: Some("fixture".into()),
            managed: Some(managed.clone()),
        }];
        let (code, body) = readiness(true, &Ok(()), &FS, &regs, &HashMap::new());
        assert_eq!((code, &body["status"]), (200, &json!("degraded")));
        let entry = &body["registries"][0];
        assert_eq!(entry["state"], "failing");
        assert_eq!(entry["lastError"], "region is not set");
        assert_eq!(entry["lastErrorKind"], "invalid_options");
        managed.shutdown();
    }

    struct Expired;

    impl crate::providers::CredentialFetcher for Expired {
        fn fetch(
            &self,
        ) -> Result<ociregistry_plugin_api::Credential, crate::providers::ProviderError> {
            Ok(ociregistry_plugin_api::Credential::bearer("expired-token")
                .expiring_at(std::time::SystemTime::now() - std::time::Duration::from_secs(60)))
        }
    }

    #[tokio::test]
    async fn an_already_expired_credential_is_flagged() {
        let managed = ManagedCredential::spawn(
            "prov.example".into(),
            std::sync::Arc::new(Expired),
            crate::providers::Schedule::default(),
        );
        assert!(managed.current().await.is_ok());
        let regs = [RegistryCredential {
            name: "prov.example".into(),
            kind: "provider",
            provider: Some("fixture".into()),
            managed: Some(managed.clone()),
        }];
        let (_, body) = readiness(true, &Ok(()), &FS, &regs, &HashMap::new());
        let entry = &body["registries"][0];
        assert_eq!(entry["expiryIgnored"], true);
        assert!(entry["warning"].as_str().unwrap().contains("already past"));
        assert!(entry.get("expiresAt").is_none());
        managed.shutdown();
    }

    #[tokio::test]
    async fn write_probe() {
        let dir = tempfile::tempdir().unwrap();
        assert!(cache_writable(dir.path()).await.is_err(), "no tmp/ yet");
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        cache_writable(dir.path()).await.unwrap();
        assert_eq!(crate::store::staging::tests::tmp_file_count(dir.path()), 0);
    }
}

//! The `kubelet` auth provider: runs a kubelet credential provider binary (KEP-2133, API
//! `credentialprovider.kubelet.k8s.io/v1`), so that the binaries written for kubelet work
//! unchanged: `ecr-credential-provider`, `acr-credential-provider`, `auth-provider-gcp`, ...
//!
//! At each fetch the plugin runs the binary with a `CredentialProviderRequest` on its
//! standard input, `image` being `REGISTRY/REPOSITORY` of the pull that needs the credential
//! (scheduled refreshes and the first fetch at start-up have no pull: they send the
//! registry name alone), and reads a `CredentialProviderResponse` from its standard output:
//!
//! - `auth`: the credential of the key that matches the image, as kubelet matches: a key is
//!   `host[:port][/path]`, each dot-separated label of the host may be a glob (`*.dkr.ecr.*.
//!   amazonaws.com`: same number of labels), the port must be the same, the path a prefix
//!   of the repository; of several matches the longest key wins.
//! - `cacheDuration` (a Go duration, `6h0m0s`): the credential's expiry (the host refreshes
//!   before it). Absent: `defaultCacheDuration=`, or no expiry (the host's `every`
//!   applies). `0s` means "do not cache": no expiry is given either.
//! - `cacheKeyType`: `Image` makes the credential valid for that repository only (the host
//!   then keeps one per repository and asks with each new repository); `Registry` and
//!   `Global` make it the registry entry's credential.
//!
//! # Options (`providerOpts`)
//!
//! | key | required | meaning |
//! |---|---|---|
//! | `binPath` | yes | the provider binary's absolute path |
//! | `args` | no | its arguments, separated by spaces; `%20` is a space, `%2C` a comma, `%25` a percent sign |
//! | `env` | no | names of the server's environment variables passed to it, `:`-separated (e.g. `AWS_REGION:HOME`); it gets those and `PATH`, nothing else |
//! | `timeout` | no | seconds it may run (default 20; never past the host's deadline) |
//! | `defaultCacheDuration` | no | expiry when the response has no `cacheDuration` (Go duration, e.g. `5m`) |
//!
//! ```yaml
//! registries:
//! - name: 123456789012.dkr.ecr.eu-west-1.amazonaws.com
//!   auth:
//!     token:
//!       provider: kubelet
//!       providerOpts: binPath=/usr/local/bin/ecr-credential-provider,env=AWS_REGION:HOME
//! ```

#![forbid(unsafe_code)]

#[path = "../../exec/src/run.rs"]
mod run;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use ociregistry_plugin_api::{
    CreateContext, Credential, FetchRequest, OptionSpec, PluginError, Provider, ProviderFactory,
    ProviderOpts, export_provider,
};

use run::{Program, RunError, one_line};

/// The API version spoken.
pub const API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";
/// The most read from the binary's standard output.
pub const OUTPUT_LIMIT: usize = 64 * 1024;
/// The default time the binary may run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// The `kubelet` provider factory.
#[derive(Debug)]
pub struct Factory;

impl ProviderFactory for Factory {
    const NAME: &'static str = "kubelet";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "runs a kubelet credential provider binary (credentialprovider.kubelet.k8s.io/v1)";
    const OPTIONS: &'static [OptionSpec] = &[
        OptionSpec {
            key: "binPath",
            description: "the provider binary's absolute path",
            required: true,
        },
        OptionSpec {
            key: "args",
            description: "its arguments, space-separated (%20 space, %2C comma, %25 percent)",
            required: false,
        },
        OptionSpec {
            key: "env",
            description: "server environment variables passed to it, :-separated (PATH always is)",
            required: false,
        },
        OptionSpec {
            key: "timeout",
            description: "seconds it may run; default 20",
            required: false,
        },
        OptionSpec {
            key: "defaultCacheDuration",
            description: "expiry when the response has no cacheDuration (e.g. 5m)",
            required: false,
        },
    ];

    fn create(opts: &ProviderOpts) -> Result<Box<dyn Provider>, PluginError> {
        Self::create_with(opts, &CreateContext::new("", ""))
    }

    fn create_with(
        opts: &ProviderOpts,
        context: &CreateContext,
    ) -> Result<Box<dyn Provider>, PluginError> {
        Ok(Box::new(KubeletProvider::new(
            opts,
            context,
            std::env::var_os("PATH"),
        )?))
    }
}

export_provider!(Factory);

/// A configured `kubelet` provider.
#[derive(Debug)]
pub struct KubeletProvider {
    program: Program,
    label: String,
    registry: String,
    timeout: Duration,
    default_cache: Option<Duration>,
}

impl KubeletProvider {
    /// From validated options, for the registry entry in `context`.
    pub fn new(
        opts: &ProviderOpts,
        context: &CreateContext,
        path_var: Option<OsString>,
    ) -> Result<Self, PluginError> {
        let bin = PathBuf::from(opts.required("binPath")?);
        if !bin.is_absolute() {
            return Err(PluginError::invalid_options(
                "option \"binPath\" must be an absolute path",
            ));
        }
        let args = match opts.get("args") {
            Some(a) => parse_args(a).map_err(PluginError::invalid_options)?,
            None => Vec::new(),
        };
        let env = run::parse_env_names(opts.get("env")).map_err(PluginError::invalid_options)?;
        let timeout = match opts.parsed::<f64>("timeout")? {
            Some(t) if t.is_finite() && t > 0.0 => Duration::from_secs_f64(t),
            Some(_) => {
                return Err(PluginError::invalid_options(
                    "option \"timeout\" must be a positive number of seconds",
                ));
            }
            None => DEFAULT_TIMEOUT,
        };
        let default_cache = match opts.get("defaultCacheDuration") {
            Some(d) => Some(parse_go_duration(d).ok_or_else(|| {
                PluginError::invalid_options(format!(
                    "option \"defaultCacheDuration\": \"{}\" is not a duration (e.g. 5m, 1h30m)",
                    one_line(d, 64)
                ))
            })?),
            None => None,
        };
        if context.registry.is_empty() {
            return Err(PluginError::invalid_options(
                "the kubelet provider needs plugin-api 1.1 (the registry name at create); upgrade ociregistry",
            ));
        }
        Ok(KubeletProvider {
            label: bin.display().to_string(),
            program: Program {
                program: bin,
                args,
                env: run::env_from_names(&env),
                path_var,
            },
            registry: context.registry.clone(),
            timeout,
            default_cache,
        })
    }

    fn get(&self, repository: Option<&str>, deadline: Instant) -> Result<Credential, PluginError> {
        let label = &self.label;
        let image = match repository {
            Some(repo) => format!("{}/{repo}", self.registry),
            None => self.registry.clone(),
        };
        let request = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "CredentialProviderRequest",
            "image": image,
        });
        let output = self
            .program
            .run(request.to_string().as_bytes(), deadline, OUTPUT_LIMIT)
            .map_err(|e| match e {
                RunError::NotFound => {
                    PluginError::new(format!("credential provider {label} not found"))
                }
                other => PluginError::new(format!("credential provider {label} {other}")),
            })?;
        if !output.status.success() {
            let said = String::from_utf8_lossy(&output.stderr);
            let said = said.trim();
            return Err(PluginError::new(format!(
                "credential provider {label} failed for image {image} ({}): {}",
                output.status,
                if said.is_empty() {
                    "no output on stderr".to_owned()
                } else {
                    one_line(said, 300)
                }
            )));
        }
        let response = parse_response(&output.stdout).map_err(|what| {
            PluginError::new(format!(
                "credential provider {label} printed {what}, not a {API_VERSION} CredentialProviderResponse"
            ))
        })?;
        credential_for(&response, &image, self.default_cache)
            .map_err(|what| PluginError::new(format!("credential provider {label}: {what}")))
    }
}

impl Provider for KubeletProvider {
    fn fetch(&self) -> Result<Credential, PluginError> {
        self.get(None, Instant::now() + self.timeout)
    }

    fn fetch_with(&self, request: &FetchRequest) -> Result<Credential, PluginError> {
        let allowed = self.timeout.min(request.time_left());
        self.get(request.repository.as_deref(), Instant::now() + allowed)
    }
}

/// `CredentialProviderResponse`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    api_version: String,
    kind: String,
    cache_key_type: Option<String>,
    cache_duration: Option<String>,
    #[serde(default)]
    auth: BTreeMap<String, AuthConfig>,
}

#[derive(serde::Deserialize)]
struct AuthConfig {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

fn parse_response(stdout: &[u8]) -> Result<Response, String> {
    let r: Response = serde_json::from_slice(stdout).map_err(|e| {
        if stdout.iter().all(u8::is_ascii_whitespace) {
            "nothing".to_owned()
        } else if e.is_data() {
            "JSON of another shape".to_owned()
        } else {
            "malformed JSON".to_owned()
        }
    })?;
    if r.api_version != API_VERSION || r.kind != "CredentialProviderResponse" {
        return Err(format!(
            "apiVersion {:?} kind {:?}",
            one_line(&r.api_version, 80),
            one_line(&r.kind, 80)
        ));
    }
    Ok(r)
}

/// The credential of `response` for `image` (`registry[/repository]`).
fn credential_for(
    response: &Response,
    image: &str,
    default_cache: Option<Duration>,
) -> Result<Credential, String> {
    let best = response
        .auth
        .iter()
        .filter(|(key, _)| key_matches(key, image))
        .max_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    let Some((_, auth)) = best else {
        let keys: Vec<String> = response.auth.keys().map(|k| one_line(k, 100)).collect();
        return Err(format!(
            "no auth entry matches image {image} (keys: {})",
            if keys.is_empty() {
                "none".to_owned()
            } else {
                keys.join(", ")
            }
        ));
    };
    if auth.password.is_empty() {
        return Err(format!(
            "the auth entry for image {image} has an empty password"
        ));
    }
    let mut credential = Credential::basic(auth.username.clone(), auth.password.clone());
    let cache =
        match response.cache_duration.as_deref() {
            Some(d) => Some(parse_go_duration(d).ok_or_else(|| {
                format!("cacheDuration \"{}\" is not a duration", one_line(d, 64))
            })?),
            None => default_cache,
        };
    if let Some(d) = cache.filter(|d| !d.is_zero()) {
        credential = credential.expiring_at(SystemTime::now() + d);
    }
    // `Image` without a repository (a scheduled refresh): the host still learns that the
    // provider's credentials are per image, and asks with each repository.
    match response.cache_key_type.as_deref() {
        Some("Image") => credential = credential.for_repository_only(),
        Some("Registry" | "Global") | None => {}
        Some(other) => {
            return Err(format!(
                "cacheKeyType \"{}\" is not Image, Registry or Global",
                one_line(other, 40)
            ));
        }
    }
    Ok(credential)
}

/// Whether auth key `key` matches `image` (`host[:port][/path]`), as kubelet's
/// `URLsMatchStr`: same number of host labels, each matched as a glob, same port, and the
/// key's path a prefix of the image's.
fn key_matches(key: &str, image: &str) -> bool {
    let strip = |s: &str| -> String {
        let s = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s);
        s.to_owned()
    };
    let (key, image) = (strip(key), strip(image));
    let split = |s: &str| -> (String, String) {
        match s.split_once('/') {
            Some((h, p)) => (h.to_owned(), p.trim_end_matches('/').to_owned()),
            None => (s.to_owned(), String::new()),
        }
    };
    let ((key_host, key_path), (image_host, image_path)) = (split(&key), split(&image));
    let host_port = |h: &str| -> (String, String) {
        match h.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), p.to_owned()),
            None => (h.to_ascii_lowercase(), String::new()),
        }
    };
    let ((kh, kp), (ih, ip)) = (host_port(&key_host), host_port(&image_host));
    if kp != ip {
        return false;
    }
    let (k_labels, i_labels): (Vec<&str>, Vec<&str>) =
        (kh.split('.').collect(), ih.split('.').collect());
    if k_labels.len() != i_labels.len() || !k_labels.iter().zip(&i_labels).all(|(k, i)| glob(k, i))
    {
        return false;
    }
    key_path.is_empty() || image_path == key_path || image_path.starts_with(&format!("{key_path}/"))
}

/// `*` (any run), `?` (one character) and literal characters, as Go's `filepath.Match`
/// within one host label.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A Go `time.Duration` string (`6h0m0s`, `1.5h`, `300ms`, `0`); None when malformed or
/// negative.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += value * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Splits `args=` at whitespace and decodes `%XX` in each argument.
fn parse_args(value: &str) -> Result<Vec<OsString>, String> {
    value
        .split_whitespace()
        .map(|arg| {
            let bytes = arg.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    let hex = arg
                        .get(i + 1..i + 3)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| {
                            format!(
                                "option \"args\": bad %-escape in \"{}\" (use %20, %2C, %25)",
                                one_line(arg, 64)
                            )
                        })?;
                    out.push(hex);
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            String::from_utf8(out)
                .map(OsString::from)
                .map_err(|_| "option \"args\": an argument is not UTF-8".to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests;

//! The `gcp` auth provider: an OAuth 2 access token for Google Artifact Registry
//! (`*-docker.pkg.dev`) and Container Registry (`gcr.io`), sent as the Basic credential
//! `oauth2accesstoken` / `<access token>`, as `gcloud auth configure-docker` does.
//!
//! Where the token comes from (Application Default Credentials, in Google's order):
//!
//! 1. a credentials file: `credentialsFile=`, else `GOOGLE_APPLICATION_CREDENTIALS`, else
//!    gcloud's `application_default_credentials.json` (in `$CLOUDSDK_CONFIG`, default
//!    `~/.config/gcloud`) when it exists. Supported `type`s:
//!    - `service_account` (a key file): a JWT signed with the key (RS256) exchanged at the
//!      file's `token_uri` (JWT bearer grant);
//!    - `authorized_user` (`gcloud auth application-default login`): the refresh token
//!      exchanged at the token endpoint;
//!    - `external_account` (workload identity federation, e.g. from AKS, EKS or CI with an
//!      OIDC token): the subject token from `credential_source` `file` or `url` (format
//!      `text` or `json`) exchanged at STS (`token_url`, default
//!      `https://sts.googleapis.com/v1/token`), then, when the file has a
//!      `service_account_impersonation_url`, for that service account's token
//!      (`generateAccessToken`, expiry from its `expireTime`).
//!
//!    Not supported, refused with a one-line error: `impersonated_service_account` files,
//!    `external_account` sources of the AWS (`environment_id`) and `executable` kinds,
//!    and workforce pools' `workforce_pool_user_project`.
//!    The file (and an `external_account`'s subject token) is read again at every fetch,
//!    so a rotated key or token is picked up.
//! 2. otherwise the metadata server (GCE, GKE Workload Identity, Cloud Run):
//!    `GET http://$GCE_METADATA_HOST/computeMetadata/v1/instance/service-accounts/default/token`
//!    with `Metadata-Flavor: Google`; the host defaults to `metadata.google.internal`.
//!
//! The scope asked for (key files) is `https://www.googleapis.com/auth/cloud-platform`.
//! The credential expires `expires_in` seconds after the request was sent (an hour on
//! Google); the host refreshes it before then.
//!
//! # Options (`providerOpts`)
//!
//! | key | meaning |
//! |---|---|
//! | `source` | `auto` (default: a credentials file if one is found, else the metadata server), `metadata` or `file` |
//! | `credentialsFile` | the ADC JSON file; default `GOOGLE_APPLICATION_CREDENTIALS`, then gcloud's well-known file |
//! | `tokenUrl` | the OAuth token endpoint for credentials files; default the file's `token_uri` (`token_url` for `external_account`), else Google's |
//! | `metadataHost` | `host[:port]` of the metadata server; default `GCE_METADATA_HOST`, else `metadata.google.internal` |
//! | `serviceAccount` | the metadata server's service account (email); default `default` |
//!
//! Token endpoints must be `https` (plain `http` only to a loopback address, for tests);
//! the metadata server is plain `http` by design and never reached through a proxy.
//! Errors are one line and never contain a token, key or client secret; an OAuth error
//! answer contributes its `error` and `error_description`.
//!
//! ```yaml
//! registries:
//! - name: europe-docker.pkg.dev
//!   auth:
//!     token:
//!       provider: gcp
//!       expiry: 50m
//! ```

#![forbid(unsafe_code)]

#[cfg(test)]
#[path = "../../../plugin-common/fake_server.rs"]
mod fake_server;
#[path = "../../../plugin-common/http.rs"]
mod http;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ociregistry_plugin_api::{
    Credential, OptionSpec, PluginError, Provider, ProviderFactory, ProviderOpts, export_provider,
    tracing,
};

/// The user name Google registries expect with an access token as the password.
pub const USER: &str = "oauth2accesstoken";
const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
const DEFAULT_STS_URL: &str = "https://sts.googleapis.com/v1/token";
/// Lifetime asked for in a service-account JWT (the most Google accepts).
const JWT_LIFETIME_SECS: u64 = 3600;

/// The `gcp` provider factory.
#[derive(Debug)]
pub struct Factory;

impl ProviderFactory for Factory {
    const NAME: &'static str = "gcp";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Google Artifact Registry / GCR: OAuth access token (metadata server or Application Default Credentials) as oauth2accesstoken:<token>";
    const OPTIONS: &'static [OptionSpec] = &[
        OptionSpec {
            key: "source",
            description: "auto (default: a credentials file if found, else the metadata server), metadata or file",
            required: false,
        },
        OptionSpec {
            key: "credentialsFile",
            description: "ADC JSON file (service_account, authorized_user or external_account); default GOOGLE_APPLICATION_CREDENTIALS, then gcloud's",
            required: false,
        },
        OptionSpec {
            key: "tokenUrl",
            description: "OAuth token endpoint for credentials files; default the file's token_uri",
            required: false,
        },
        OptionSpec {
            key: "metadataHost",
            description: "metadata server host[:port]; default GCE_METADATA_HOST, else metadata.google.internal",
            required: false,
        },
        OptionSpec {
            key: "serviceAccount",
            description: "metadata server service account; default: default",
            required: false,
        },
    ];

    fn create(opts: &ProviderOpts) -> Result<Box<dyn Provider>, PluginError> {
        Ok(Box::new(GcpProvider::new(opts, &Env::from_process())?))
    }
}

export_provider!(Factory);

/// The environment variables the provider reads, captured once in `create` (tests build
/// it by hand instead of changing the process environment).
#[derive(Clone, Debug, Default)]
struct Env {
    application_credentials: Option<String>,
    metadata_host: Option<String>,
    cloudsdk_config: Option<String>,
    home: Option<String>,
}

impl Env {
    fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Env {
            application_credentials: var("GOOGLE_APPLICATION_CREDENTIALS"),
            metadata_host: var("GCE_METADATA_HOST"),
            cloudsdk_config: var("CLOUDSDK_CONFIG"),
            home: var("HOME"),
        }
    }

    /// gcloud's `application_default_credentials.json`, when it exists.
    fn well_known_file(&self) -> Option<PathBuf> {
        let dir = match (&self.cloudsdk_config, &self.home) {
            (Some(c), _) => PathBuf::from(c),
            (None, Some(h)) => Path::new(h).join(".config").join("gcloud"),
            (None, None) => return None,
        };
        let f = dir.join("application_default_credentials.json");
        f.is_file().then_some(f)
    }
}

/// Where tokens come from.
#[derive(Debug)]
enum Source {
    Metadata {
        /// The token URL on the metadata server.
        url: String,
        /// Chosen because no credentials file was found (said in errors).
        fallback: bool,
    },
    File {
        path: PathBuf,
        /// `tokenUrl=`, overriding the file's `token_uri`.
        token_url: Option<url::Url>,
    },
}

/// A configured `gcp` provider.
#[derive(Debug)]
pub struct GcpProvider {
    source: Source,
    client: reqwest::blocking::Client,
}

impl GcpProvider {
    fn new(opts: &ProviderOpts, env: &Env) -> Result<Self, PluginError> {
        let nonempty = |k: &str| opts.get(k).filter(|v| !v.is_empty());
        let token_url = nonempty("tokenUrl")
            .map(|u| http::secure_url(u, "option \"tokenUrl\""))
            .transpose()?;
        let file = nonempty("credentialsFile")
            .map(PathBuf::from)
            .or_else(|| env.application_credentials.as_ref().map(PathBuf::from));
        let metadata = |fallback: bool| -> Result<Source, PluginError> {
            let host = nonempty("metadataHost")
                .or(env.metadata_host.as_deref())
                .unwrap_or(DEFAULT_METADATA_HOST);
            let account = nonempty("serviceAccount").unwrap_or("default");
            let url = metadata_token_url(host, account)?;
            Ok(Source::Metadata { url, fallback })
        };
        let source = match opts.get("source").unwrap_or("auto") {
            "metadata" => {
                if nonempty("credentialsFile").is_some() || token_url.is_some() {
                    return Err(PluginError::invalid_options(
                        "options \"credentialsFile\" and \"tokenUrl\" do not apply to source=metadata",
                    ));
                }
                metadata(false)?
            }
            "file" => Source::File {
                path: file.or_else(|| env.well_known_file()).ok_or_else(|| {
                    PluginError::invalid_options(
                        "source=file: no credentials file: set credentialsFile=, \
                         GOOGLE_APPLICATION_CREDENTIALS, or run `gcloud auth application-default login`",
                    )
                })?,
                token_url,
            },
            "auto" => match file.or_else(|| env.well_known_file()) {
                Some(path) => Source::File { path, token_url },
                None if token_url.is_some() => {
                    return Err(PluginError::invalid_options(
                        "option \"tokenUrl\" applies to credentials files, and none was found \
                         (credentialsFile=, GOOGLE_APPLICATION_CREDENTIALS, gcloud's)",
                    ));
                }
                None => metadata(true)?,
            },
            other => {
                return Err(PluginError::invalid_options(format!(
                    "option \"source\": invalid value \"{}\"; expected auto, metadata or file",
                    http::sanitize(other)
                )));
            }
        };
        if let Source::File { path, token_url } = &source {
            // Refuse a missing, malformed or unsupported file at startup, not at the first pull.
            let creds = FileCredentials::load(path)
                .map_err(|e| PluginError::invalid_options(e.message()))?;
            if token_url.is_none() {
                creds
                    .token_url(path, None)
                    .map_err(|e| PluginError::invalid_options(e.message()))?;
            }
            creds
                .impersonation_url(path)
                .map_err(|e| PluginError::invalid_options(e.message()))?;
        }
        let client = http::client(matches!(source, Source::Metadata { .. }))?;
        tracing::debug!(source = ?source, "gcp provider configured");
        Ok(GcpProvider { source, client })
    }
}

fn metadata_token_url(host: &str, account: &str) -> Result<String, PluginError> {
    let bad = |what: &str, v: &str| {
        PluginError::invalid_options(format!("{what}: invalid value \"{}\"", http::sanitize(v)))
    };
    if host.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad("metadata host", host));
    }
    if account.is_empty() || account.contains(['/', '?', '#', ' ']) {
        return Err(bad("option \"serviceAccount\"", account));
    }
    let url = format!("http://{host}/computeMetadata/v1/instance/service-accounts/{account}/token");
    url::Url::parse(&url).map_err(|_| bad("metadata host", host))?;
    Ok(url)
}

impl Provider for GcpProvider {
    fn fetch(&self) -> Result<Credential, PluginError> {
        let sent = SystemTime::now();
        let token = match &self.source {
            Source::Metadata { url, fallback } => {
                let what = if *fallback {
                    "GCE metadata server token request (no credentials file found)"
                } else {
                    "GCE metadata server token request"
                };
                let req = self.client.get(url).header("Metadata-Flavor", "Google");
                parse_token(http::send_json(req, what)?, what)?
            }
            Source::File { path, token_url } => {
                let creds = FileCredentials::load(path)?;
                let url = creds.token_url(path, token_url.as_ref())?;
                let (what, body) = creds.grant(path, &url, sent, &self.client)?;
                let req = self
                    .client
                    .post(url.as_str())
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(body);
                let token = parse_token(http::send_json(req, &what)?, &what)?;
                match creds.impersonation_url(path)? {
                    Some(url) => impersonate(&self.client, &url, &token.access_token)?,
                    None => token,
                }
            }
        };
        tracing::debug!(expires_in = token.expires_in, "got a GCP access token");
        let credential = Credential::basic(USER, token.access_token);
        Ok(match token.expires_in {
            Some(s) => credential.expiring_at(sent + Duration::from_secs(s)),
            None => credential,
        })
    }
}

/// An OAuth 2 token answer.
struct Token {
    access_token: String,
    expires_in: Option<u64>,
}

fn parse_token(
    obj: serde_json::Map<String, serde_json::Value>,
    what: &str,
) -> Result<Token, PluginError> {
    let access_token = http::str_field(&obj, "access_token", what)?.to_owned();
    let expires_in = http::seconds_field(&obj, "expires_in", what)?;
    if expires_in == Some(0) {
        return Err(PluginError::new(format!(
            "{what}: the token is already expired (expires_in 0)"
        )));
    }
    if let Some(t) = obj.get("token_type").and_then(|t| t.as_str()) {
        if !t.eq_ignore_ascii_case("bearer") {
            return Err(PluginError::new(format!(
                "{what}: unexpected token_type \"{}\" (expected Bearer)",
                http::sanitize(t)
            )));
        }
    }
    Ok(Token {
        access_token,
        expires_in,
    })
}

/// A parsed ADC file. Holds secrets: no `Debug`.
enum FileCredentials {
    ServiceAccount {
        client_email: String,
        private_key: String,
        private_key_id: Option<String>,
        token_uri: Option<String>,
    },
    AuthorizedUser {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: Option<String>,
    },
    /// Workload identity federation: a subject token from a file or URL, exchanged at STS,
    /// then optionally for a service account's token.
    ExternalAccount {
        audience: String,
        subject_token_type: String,
        token_url: Option<String>,
        impersonation_url: Option<String>,
        subject: SubjectSource,
    },
}

/// Where an `external_account` file's subject token comes from (`credential_source`).
enum SubjectSource {
    File {
        path: PathBuf,
        /// `format.type: json`: the field holding the token.
        json_field: Option<String>,
    },
    Url {
        url: String,
        headers: Vec<(String, String)>,
        json_field: Option<String>,
    },
}

impl FileCredentials {
    fn load(path: &Path) -> Result<Self, PluginError> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| {
            PluginError::new(format!("cannot read GCP credentials file {shown}: {e}"))
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            // serde_json's message gives a position, never the content.
            PluginError::new(format!(
                "GCP credentials file {shown}: not JSON: {}",
                http::sanitize(&e.to_string())
            ))
        })?;
        let serde_json::Value::Object(obj) = v else {
            return Err(PluginError::new(format!(
                "GCP credentials file {shown}: not a JSON object"
            )));
        };
        let what = format!("GCP credentials file {shown}");
        let field = |k: &str| http::str_field(&obj, k, &what).map(str::to_owned);
        let optional = |k: &str| {
            obj.get(k)
                .and_then(|v| v.as_str())
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().to_owned())
        };
        match obj.get("type").and_then(|t| t.as_str()) {
            Some("service_account") => Ok(FileCredentials::ServiceAccount {
                client_email: field("client_email")?,
                private_key: field("private_key")?,
                private_key_id: optional("private_key_id"),
                token_uri: optional("token_uri"),
            }),
            Some("authorized_user") => Ok(FileCredentials::AuthorizedUser {
                client_id: field("client_id")?,
                client_secret: field("client_secret")?,
                refresh_token: field("refresh_token")?,
                token_uri: optional("token_uri"),
            }),
            Some("external_account") => Ok(FileCredentials::ExternalAccount {
                audience: field("audience")?,
                subject_token_type: field("subject_token_type")?,
                token_url: optional("token_url"),
                impersonation_url: optional("service_account_impersonation_url"),
                subject: subject_source(&obj, &what)?,
            }),
            Some(other) => Err(PluginError::new(format!(
                "{what}: credentials type \"{}\" is not supported (supported: service_account, authorized_user, external_account)",
                http::sanitize(other)
            ))),
            None => Err(PluginError::new(format!(
                "{what}: no \"type\" (expected service_account, authorized_user or external_account)"
            ))),
        }
    }

    /// The token endpoint: the override, else the file's `token_uri`, else Google's.
    fn token_url(
        &self,
        path: &Path,
        overridden: Option<&url::Url>,
    ) -> Result<url::Url, PluginError> {
        if let Some(u) = overridden {
            return Ok(u.clone());
        }
        let (from_file, field, default) = match self {
            FileCredentials::ServiceAccount { token_uri, .. }
            | FileCredentials::AuthorizedUser { token_uri, .. } => {
                (token_uri.as_deref(), "token_uri", DEFAULT_TOKEN_URL)
            }
            FileCredentials::ExternalAccount { token_url, .. } => {
                (token_url.as_deref(), "token_url", DEFAULT_STS_URL)
            }
        };
        match from_file {
            Some(u) => http::secure_url(
                u,
                &format!("GCP credentials file {}: {field}", path.display()),
            )
            .map_err(|e| PluginError::new(e.message())),
            None => http::secure_url(default, "token URL"),
        }
    }

    /// An `external_account` file's `service_account_impersonation_url`, checked.
    fn impersonation_url(&self, path: &Path) -> Result<Option<url::Url>, PluginError> {
        match self {
            FileCredentials::ExternalAccount {
                impersonation_url: Some(u),
                ..
            } => http::secure_url(
                u,
                &format!(
                    "GCP credentials file {}: service_account_impersonation_url",
                    path.display()
                ),
            )
            .map(Some)
            .map_err(|e| PluginError::new(e.message())),
            _ => Ok(None),
        }
    }

    /// The request body for the token endpoint, and the call's name for errors.
    fn grant(
        &self,
        path: &Path,
        token_url: &url::Url,
        now: SystemTime,
        client: &reqwest::blocking::Client,
    ) -> Result<(String, String), PluginError> {
        match self {
            FileCredentials::ExternalAccount {
                audience,
                subject_token_type,
                subject,
                ..
            } => {
                let subject_token = subject.token(client)?;
                Ok((
                    "STS token exchange".to_owned(),
                    http::form(&[
                        (
                            "grant_type",
                            "urn:ietf:params:oauth:grant-type:token-exchange",
                        ),
                        ("audience", audience),
                        ("scope", CLOUD_PLATFORM_SCOPE),
                        (
                            "requested_token_type",
                            "urn:ietf:params:oauth:token-type:access_token",
                        ),
                        ("subject_token", &subject_token),
                        ("subject_token_type", subject_token_type),
                    ]),
                ))
            }
            FileCredentials::ServiceAccount {
                client_email,
                private_key,
                private_key_id,
                ..
            } => {
                let iat = now
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default();
                let claims = serde_json::json!({
                    "iss": client_email,
                    "scope": CLOUD_PLATFORM_SCOPE,
                    "aud": token_url.as_str(),
                    "iat": iat,
                    "exp": iat + JWT_LIFETIME_SECS,
                });
                let assertion =
                    sign_jwt(&claims, private_key, private_key_id.as_deref()).map_err(|e| {
                        PluginError::new(format!(
                            "GCP credentials file {}: {}",
                            path.display(),
                            e.message()
                        ))
                    })?;
                Ok((
                    format!("service account {client_email} token request"),
                    http::form(&[
                        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                        ("assertion", &assertion),
                    ]),
                ))
            }
            FileCredentials::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
                ..
            } => Ok((
                "authorized_user refresh token request".to_owned(),
                http::form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", client_id),
                    ("client_secret", client_secret),
                    ("refresh_token", refresh_token),
                ]),
            )),
        }
    }
}

/// The `credential_source` of an `external_account` file: a file or a URL (text or JSON).
fn subject_source(
    obj: &serde_json::Map<String, serde_json::Value>,
    what: &str,
) -> Result<SubjectSource, PluginError> {
    let src = obj
        .get("credential_source")
        .and_then(|s| s.as_object())
        .ok_or_else(|| PluginError::new(format!("{what}: no \"credential_source\" object")))?;
    for (key, kind) in [("environment_id", "AWS"), ("executable", "executable")] {
        if src.contains_key(key) {
            return Err(PluginError::new(format!(
                "{what}: credential_source of the {kind} kind is not supported (supported: file, url)"
            )));
        }
    }
    let format = src.get("format").and_then(|f| f.as_object());
    let json_field = match format.and_then(|f| f.get("type")).and_then(|t| t.as_str()) {
        None | Some("text") => None,
        Some("json") => Some(
            format
                .and_then(|f| f.get("subject_token_field_name"))
                .and_then(|n| n.as_str())
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    PluginError::new(format!(
                        "{what}: credential_source format json without subject_token_field_name"
                    ))
                })?
                .to_owned(),
        ),
        Some(other) => {
            return Err(PluginError::new(format!(
                "{what}: credential_source format type \"{}\" is not supported (text, json)",
                http::sanitize(other)
            )));
        }
    };
    if let Some(file) = src.get("file").and_then(|f| f.as_str()) {
        return Ok(SubjectSource::File {
            path: PathBuf::from(file),
            json_field,
        });
    }
    if let Some(url) = src.get("url").and_then(|u| u.as_str()) {
        url::Url::parse(url).map_err(|e| {
            PluginError::new(format!(
                "{what}: credential_source url \"{}\": {e}",
                http::sanitize(url)
            ))
        })?;
        let headers = src
            .get("headers")
            .and_then(|h| h.as_object())
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        return Ok(SubjectSource::Url {
            url: url.to_owned(),
            headers,
            json_field,
        });
    }
    Err(PluginError::new(format!(
        "{what}: credential_source has neither \"file\" nor \"url\""
    )))
}

impl SubjectSource {
    /// Reads the subject token (afresh: they are short-lived and rotated).
    fn token(&self, client: &reqwest::blocking::Client) -> Result<String, PluginError> {
        let (text, what, json_field) = match self {
            SubjectSource::File { path, json_field } => {
                let what = format!("subject token file {}", path.display());
                let text = std::fs::read_to_string(path)
                    .map_err(|e| PluginError::new(format!("cannot read the {what}: {e}")))?;
                (text, what, json_field)
            }
            SubjectSource::Url {
                url,
                headers,
                json_field,
            } => {
                let what = "subject token request".to_owned();
                let mut req = client.get(url);
                for (k, v) in headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                (http::send_text(req, &what)?, what, json_field)
            }
        };
        let token = match json_field {
            None => text.trim().to_owned(),
            Some(field) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(obj)) => {
                    http::str_field(&obj, field, &what)?.to_owned()
                }
                _ => return Err(PluginError::new(format!("{what}: not a JSON object"))),
            },
        };
        if token.is_empty() {
            return Err(PluginError::new(format!("{what}: empty subject token")));
        }
        Ok(token)
    }
}

/// Exchanges a federated access token for a service account's (IAM Credentials
/// `generateAccessToken`).
fn impersonate(
    client: &reqwest::blocking::Client,
    url: &url::Url,
    bearer: &str,
) -> Result<Token, PluginError> {
    let what = "service account impersonation (generateAccessToken)";
    let body = serde_json::json!({"scope": [CLOUD_PLATFORM_SCOPE], "lifetime": "3600s"});
    let req = client
        .post(url.as_str())
        .header("Authorization", format!("Bearer {bearer}"))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    let obj = http::send_json(req, what)?;
    let access_token = http::str_field(&obj, "accessToken", what)?.to_owned();
    let expire = http::str_field(&obj, "expireTime", what)?;
    let at = parse_rfc3339(expire).ok_or_else(|| {
        PluginError::new(format!(
            "{what}: field \"expireTime\" is not an RFC 3339 time"
        ))
    })?;
    let left = at
        .duration_since(SystemTime::now())
        .ok()
        .filter(|d| d.as_secs() > 0)
        .ok_or_else(|| PluginError::new(format!("{what}: the token is already expired")))?;
    Ok(Token {
        access_token,
        expires_in: Some(left.as_secs()),
    })
}

/// `2026-12-01T08:00:00Z`, `2026-12-01T08:00:00.123456Z`, `...+01:00`.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, se) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let r = rest.get(1..)?;
            if r.len() != 5 || r.as_bytes()[2] != b':' {
                return None;
            }
            sign * (r.get(0..2)?.parse::<i64>().ok()? * 3600
                + r.get(3..5)?.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    u64::try_from(t)
        .ok()
        .map(|t| UNIX_EPOCH + Duration::from_secs(t))
}

/// An RS256 JWT of `claims`, signed with the PEM private key (PKCS#8, or PKCS#1).
fn sign_jwt(
    claims: &serde_json::Value,
    private_key_pem: &str,
    key_id: Option<&str>,
) -> Result<String, PluginError> {
    use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = key_id {
        header["kid"] = serde_json::Value::String(kid.to_owned());
    }
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let der = pem_to_der(private_key_pem)?;
    let key = RsaKeyPair::from_pkcs8(&der)
        .or_else(|_| RsaKeyPair::from_der(&der))
        .map_err(|_| PluginError::new("private_key is not an RSA private key"))?;
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| PluginError::new("signing the service-account JWT failed"))?;
    Ok(format!("{signing_input}.{}", b64.encode(signature)))
}

/// The DER bytes of the first PEM block.
fn pem_to_der(pem: &str) -> Result<Vec<u8>, PluginError> {
    let bad = || PluginError::new("private_key is not a PEM private key");
    let start = pem.find("-----BEGIN ").ok_or_else(bad)?;
    let rest = &pem[start..];
    let body_start = rest.find('\n').ok_or_else(bad)? + 1;
    let body_end = rest.find("-----END ").ok_or_else(bad)?;
    if body_end < body_start {
        return Err(bad());
    }
    let b64: String = rest[body_start..body_end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests;

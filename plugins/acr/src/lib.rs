//! The `acr` auth provider: an Azure Container Registry refresh token, obtained as
//! `az acr login` does, and sent as the Basic credential
//! `00000000-0000-0000-0000-000000000000` / `<refresh token>` (the null-GUID user ACR
//! documents for token logins).
//!
//! Two steps at every fetch:
//!
//! 1. an Entra ID (Azure AD) access token for `resource` (default
//!    `https://management.azure.com/`), from the first identity that is configured, in the
//!    Azure SDKs' `DefaultAzureCredential` order (or the one `identity=` names):
//!    - `secret`: a service principal's client secret (`AZURE_CLIENT_SECRET`, or the
//!      variable `clientSecretEnv=` names) with `AZURE_CLIENT_ID` and `AZURE_TENANT_ID`,
//!      client-credentials grant at `{authorityHost}/{tenant}/oauth2/v2.0/token`;
//!    - `workload`: AKS workload identity: the federated token file
//!      `AZURE_FEDERATED_TOKEN_FILE` (read afresh each time) as the client assertion, with
//!      `AZURE_CLIENT_ID` and `AZURE_TENANT_ID`, at the same endpoint;
//!    - `managed`: a managed identity through IMDS
//!      (`GET http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=...`
//!      with `Metadata: true`; `clientId=` / `AZURE_CLIENT_ID` picks a user-assigned
//!      identity), or App Service / Container Apps (`IDENTITY_ENDPOINT` with
//!      `IDENTITY_HEADER`, api-version 2019-08-01). `IMDS_ENDPOINT` or
//!      `AZURE_POD_IDENTITY_AUTHORITY_HOST` replace the IMDS base URL, `imdsEndpoint=` the
//!      whole token URL. Azure Arc (`IDENTITY_ENDPOINT` without `IDENTITY_HEADER`) is not
//!      supported.
//!
//!    Client certificates (`AZURE_CLIENT_CERTIFICATE_PATH`), user name / password and the
//!    Azure CLI's login are not supported.
//! 2. the exchange: `POST https://<registry>/oauth2/exchange` with
//!    `grant_type=access_token&service=<registry>&tenant=<tenant>&access_token=<token>`,
//!    answered with `{"refresh_token": ...}`. The tenant is `tenant=` / `AZURE_TENANT_ID`,
//!    else the access token's `tid` claim.
//!
//! The credential expires at the refresh token's `exp` claim (read without verifying the
//! token: ACR made it), else when the Entra token expires; the host refreshes before then.
//!
//! # Options (`providerOpts`)
//!
//! | key | meaning |
//! |---|---|
//! | `registry` | the registry host, e.g. `myregistry.azurecr.io`; default: the registry entry's name (a host of plugin-api 1.1 or later passes it) |
//! | `identity` | `auto` (default), `secret`, `workload` or `managed` |
//! | `tenant` | the Entra tenant ID; default `AZURE_TENANT_ID` |
//! | `clientId` | the application / user-assigned identity client ID; default `AZURE_CLIENT_ID` |
//! | `clientSecretEnv` | the environment variable holding the client secret; default `AZURE_CLIENT_SECRET` |
//! | `resource` | the token audience; default `https://management.azure.com/` (`https://containerregistry.azure.net/` for registries that refuse ARM tokens) |
//! | `authorityHost` | the Entra endpoint; default `AZURE_AUTHORITY_HOST`, else `https://login.microsoftonline.com` |
//! | `imdsEndpoint` | the managed-identity token URL (IMDS protocol); default as above |
//! | `exchangeUrl` | the ACR exchange URL; default `https://<registry>/oauth2/exchange` |
//!
//! Every URL that a secret is sent to must be `https`, or plain `http` to a loopback
//! address (for tests): the registry's own exchange endpoint is `https` unless
//! `exchangeUrl=` says otherwise. IMDS is plain `http` by design and never reached
//! through a proxy. Errors are one line and never contain a token or a secret; an error
//! answer contributes its `error` / `error_description` (Entra) or `errors` (ACR).
//!
//! ```yaml
//! registries:
//! - name: myregistry.azurecr.io
//!   auth:
//!     token:
//!       provider: acr        # registry: the entry's name
//!       expiry: 1h
//! ```

#![forbid(unsafe_code)]

#[cfg(test)]
#[path = "../../../plugin-common/fake_server.rs"]
mod fake_server;
#[path = "../../../plugin-common/http.rs"]
mod http;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ociregistry_plugin_api::{
    CreateContext, Credential, OptionSpec, PluginError, Provider, ProviderFactory, ProviderOpts,
    Secret, export_provider, tracing,
};

/// The user ACR expects with a refresh token as the password.
pub const USER: &str = "00000000-0000-0000-0000-000000000000";
const DEFAULT_RESOURCE: &str = "https://management.azure.com/";
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
const DEFAULT_IMDS_BASE: &str = "http://169.254.169.254";
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";

/// The `acr` provider factory.
#[derive(Debug)]
pub struct Factory;

impl ProviderFactory for Factory {
    const NAME: &'static str = "acr";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Azure Container Registry: Entra ID token (client secret, workload identity or managed identity) exchanged for an ACR refresh token";
    const OPTIONS: &'static [OptionSpec] = &[
        OptionSpec {
            key: "registry",
            description: "the registry host, e.g. myregistry.azurecr.io; default: the registry entry's name",
            required: false,
        },
        OptionSpec {
            key: "identity",
            description: "auto (default: secret, then workload, then managed), secret, workload or managed",
            required: false,
        },
        OptionSpec {
            key: "tenant",
            description: "Entra tenant ID; default AZURE_TENANT_ID",
            required: false,
        },
        OptionSpec {
            key: "clientId",
            description: "application or user-assigned identity client ID; default AZURE_CLIENT_ID",
            required: false,
        },
        OptionSpec {
            key: "clientSecretEnv",
            description: "environment variable holding the client secret; default AZURE_CLIENT_SECRET",
            required: false,
        },
        OptionSpec {
            key: "resource",
            description: "token audience; default https://management.azure.com/",
            required: false,
        },
        OptionSpec {
            key: "authorityHost",
            description: "Entra endpoint; default AZURE_AUTHORITY_HOST, else https://login.microsoftonline.com",
            required: false,
        },
        OptionSpec {
            key: "imdsEndpoint",
            description: "managed identity token URL (IMDS protocol); default IMDS",
            required: false,
        },
        OptionSpec {
            key: "exchangeUrl",
            description: "ACR token exchange URL; default https://<registry>/oauth2/exchange",
            required: false,
        },
    ];

    fn create(opts: &ProviderOpts) -> Result<Box<dyn Provider>, PluginError> {
        Ok(Box::new(AcrProvider::new(opts, &Env::from_process(), "")?))
    }

    fn create_with(
        opts: &ProviderOpts,
        context: &CreateContext,
    ) -> Result<Box<dyn Provider>, PluginError> {
        let entry = &context.registry;
        Ok(Box::new(AcrProvider::new(
            opts,
            &Env::from_process(),
            entry,
        )?))
    }
}

export_provider!(Factory);

/// The process environment, captured once in `create` (tests build it by hand).
#[derive(Clone, Default)]
struct Env(BTreeMap<String, String>);

impl Env {
    fn from_process() -> Self {
        Env(std::env::vars()
            .filter(|(_, v)| !v.trim().is_empty())
            .collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.trim())
    }
}

/// How the Entra token is obtained.
enum Identity {
    ClientSecret {
        tenant: String,
        client_id: String,
        secret: Secret,
        token_url: url::Url,
    },
    Workload {
        tenant: String,
        client_id: String,
        token_file: PathBuf,
        token_url: url::Url,
    },
    /// IMDS protocol (VMs, VM scale sets, AKS node identities).
    Imds {
        url: url::Url,
        client_id: Option<String>,
    },
    /// App Service / Container Apps protocol.
    AppService {
        url: url::Url,
        header: Secret,
        client_id: Option<String>,
    },
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::ClientSecret {
                tenant, client_id, ..
            } => write!(f, "client secret (tenant {tenant}, client {client_id})"),
            Identity::Workload {
                tenant,
                client_id,
                token_file,
                ..
            } => write!(
                f,
                "workload identity (tenant {tenant}, client {client_id}, token file {})",
                token_file.display()
            ),
            Identity::Imds { url, client_id } => {
                write!(f, "managed identity via IMDS {url} (client {client_id:?})")
            }
            Identity::AppService { url, client_id, .. } => {
                write!(f, "managed identity via {url} (client {client_id:?})")
            }
        }
    }
}

/// A configured `acr` provider.
#[derive(Debug)]
pub struct AcrProvider {
    registry: String,
    identity: Identity,
    resource: String,
    /// From the options or environment; else taken from the Entra token's `tid`.
    tenant: Option<String>,
    exchange_url: url::Url,
    client: reqwest::blocking::Client,
    imds_client: reqwest::blocking::Client,
}

impl AcrProvider {
    /// `entry`: the registry entry's name (empty when the host did not say), the default of
    /// `registry=`.
    fn new(opts: &ProviderOpts, env: &Env, entry: &str) -> Result<Self, PluginError> {
        let opt = |k: &str| opts.get(k).filter(|v| !v.is_empty());
        let invalid = |m: String| PluginError::invalid_options(m);
        let registry = registry_host(opt("registry").or(Some(entry).filter(|e| !e.is_empty())))?;
        let tenant = opt("tenant")
            .or(env.get("AZURE_TENANT_ID"))
            .map(str::to_owned);
        if let Some(t) = &tenant {
            if t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(invalid(format!(
                    "tenant: invalid value \"{}\"",
                    http::sanitize(t)
                )));
            }
        }
        let client_id = opt("clientId")
            .or(env.get("AZURE_CLIENT_ID"))
            .map(str::to_owned);
        let secret_env = opt("clientSecretEnv");
        let secret = match secret_env {
            Some(name) => Some(env.get(name).ok_or_else(|| {
                invalid(format!(
                    "option \"clientSecretEnv\": environment variable {} is not set",
                    http::sanitize(name)
                ))
            })?),
            None => env.get("AZURE_CLIENT_SECRET"),
        };
        let federated = env.get("AZURE_FEDERATED_TOKEN_FILE");
        let resource = opt("resource").unwrap_or(DEFAULT_RESOURCE).to_owned();
        http::secure_url(&resource, "option \"resource\"")?;
        let authority = opt("authorityHost")
            .or(env.get("AZURE_AUTHORITY_HOST"))
            .unwrap_or(DEFAULT_AUTHORITY);
        let entra_url = |tenant: &str| -> Result<url::Url, PluginError> {
            http::secure_url(
                &format!(
                    "{}/{tenant}/oauth2/v2.0/token",
                    authority.trim_end_matches('/')
                ),
                "authority host",
            )
        };
        let app = |what: &str| -> Result<(String, String), PluginError> {
            match (&tenant, &client_id) {
                (Some(t), Some(c)) => Ok((t.clone(), c.clone())),
                _ => Err(invalid(format!(
                    "identity={what} needs a tenant (tenant= or AZURE_TENANT_ID) and a client ID (clientId= or AZURE_CLIENT_ID)"
                ))),
            }
        };
        let kind = match opt("identity").unwrap_or("auto") {
            "auto" if secret.is_some() && tenant.is_some() && client_id.is_some() => "secret",
            "auto" if federated.is_some() && tenant.is_some() && client_id.is_some() => "workload",
            "auto" if secret_env.is_some() => "secret",
            "auto" => "managed",
            k @ ("secret" | "workload" | "managed") => k,
            other => {
                return Err(invalid(format!(
                    "option \"identity\": invalid value \"{}\"; expected auto, secret, workload or managed",
                    http::sanitize(other)
                )));
            }
        };
        let identity = match kind {
            "secret" => {
                let (tenant, client_id) = app("secret")?;
                let secret = secret.ok_or_else(|| {
                    invalid("identity=secret: no client secret (AZURE_CLIENT_SECRET, or clientSecretEnv=)".into())
                })?;
                Identity::ClientSecret {
                    token_url: entra_url(&tenant)?,
                    tenant,
                    client_id,
                    secret: Secret::new(secret),
                }
            }
            "workload" => {
                let (tenant, client_id) = app("workload")?;
                let file = federated.ok_or_else(|| {
                    invalid("identity=workload: AZURE_FEDERATED_TOKEN_FILE is not set".into())
                })?;
                Identity::Workload {
                    token_url: entra_url(&tenant)?,
                    tenant,
                    client_id,
                    token_file: PathBuf::from(file),
                }
            }
            _ => managed_identity(opt("imdsEndpoint"), env, client_id.clone())?,
        };
        // The exchange URL follows the registry.
        let exchange_url = match opt("exchangeUrl") {
            Some(u) => http::secure_url(u, "option \"exchangeUrl\"")?,
            None => http::secure_url(
                &format!("https://{registry}/oauth2/exchange"),
                "option \"registry\"",
            )?,
        };
        tracing::debug!(registry = %registry, identity = ?identity, exchange = %exchange_url, "acr provider configured");
        Ok(AcrProvider {
            registry,
            identity,
            resource,
            tenant,
            exchange_url,
            client: http::client(false)?,
            imds_client: http::client(true)?,
        })
    }
}

/// The registry host: `registry=`, else the registry entry's name.
fn registry_host(option: Option<&str>) -> Result<String, PluginError> {
    let r = option.ok_or_else(|| {
        PluginError::invalid_options(
            "no registry host: give option \"registry\" (e.g. myregistry.azurecr.io), or use a host of plugin-api 1.1 or later, which passes the registry entry's name",
        )
    })?;
    let valid = !r.is_empty()
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if !valid {
        return Err(PluginError::invalid_options(format!(
            "option \"registry\": invalid value \"{}\"; expected a host name such as myregistry.azurecr.io",
            http::sanitize(r)
        )));
    }
    Ok(r.to_ascii_lowercase())
}

fn managed_identity(
    imds_option: Option<&str>,
    env: &Env,
    client_id: Option<String>,
) -> Result<Identity, PluginError> {
    let parse = |u: &str, what: &str| {
        url::Url::parse(u).map_err(|e| {
            PluginError::invalid_options(format!(
                "{what}: invalid URL \"{}\": {e}",
                http::sanitize(u)
            ))
        })
    };
    if let Some(u) = imds_option {
        return Ok(Identity::Imds {
            url: parse(u, "option \"imdsEndpoint\"")?,
            client_id,
        });
    }
    if let Some(endpoint) = env.get("IDENTITY_ENDPOINT") {
        let header = env.get("IDENTITY_HEADER").ok_or_else(|| {
            PluginError::invalid_options(
                "IDENTITY_ENDPOINT is set without IDENTITY_HEADER (Azure Arc managed identity is not supported; set imdsEndpoint=)",
            )
        })?;
        return Ok(Identity::AppService {
            url: parse(endpoint, "IDENTITY_ENDPOINT")?,
            header: Secret::new(header),
            client_id,
        });
    }
    let base = env
        .get("IMDS_ENDPOINT")
        .or(env.get("AZURE_POD_IDENTITY_AUTHORITY_HOST"))
        .unwrap_or(DEFAULT_IMDS_BASE);
    Ok(Identity::Imds {
        url: parse(
            &format!("{}{IMDS_PATH}", base.trim_end_matches('/')),
            "IMDS_ENDPOINT",
        )?,
        client_id,
    })
}

/// An Entra access token and when it expires.
struct EntraToken {
    token: Secret,
    expires_at: Option<SystemTime>,
}

impl AcrProvider {
    fn entra_token(&self) -> Result<EntraToken, PluginError> {
        let sent = SystemTime::now();
        let scope = format!("{}/.default", self.resource.trim_end_matches('/'));
        let (what, answer) = match &self.identity {
            Identity::ClientSecret {
                client_id,
                secret,
                token_url,
                ..
            } => {
                let what = "Entra ID client secret token request";
                let body = http::form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_secret", secret.expose()),
                    ("scope", &scope),
                ]);
                (what, http::send_json(self.post(token_url, body), what)?)
            }
            Identity::Workload {
                client_id,
                token_file,
                token_url,
                ..
            } => {
                let what = "Entra ID workload identity token request";
                let assertion = std::fs::read_to_string(token_file).map_err(|e| {
                    PluginError::new(format!(
                        "cannot read the federated token file {}: {e}",
                        token_file.display()
                    ))
                })?;
                let assertion = assertion.trim();
                if assertion.is_empty() {
                    return Err(PluginError::new(format!(
                        "the federated token file {} is empty",
                        token_file.display()
                    )));
                }
                let body = http::form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion),
                    ("scope", &scope),
                ]);
                (what, http::send_json(self.post(token_url, body), what)?)
            }
            Identity::Imds { url, client_id } => {
                let what = "managed identity (IMDS) token request";
                let mut url = url.clone();
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("api-version", "2018-02-01")
                        .append_pair("resource", &self.resource);
                    if let Some(c) = client_id {
                        q.append_pair("client_id", c);
                    }
                }
                let req = self.imds_client.get(url).header("Metadata", "true");
                (what, http::send_json(req, what)?)
            }
            Identity::AppService {
                url,
                header,
                client_id,
            } => {
                let what = "managed identity (IDENTITY_ENDPOINT) token request";
                let mut url = url.clone();
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("api-version", "2019-08-01")
                        .append_pair("resource", &self.resource);
                    if let Some(c) = client_id {
                        q.append_pair("client_id", c);
                    }
                }
                let req = self
                    .imds_client
                    .get(url)
                    .header("X-IDENTITY-HEADER", header.expose());
                (what, http::send_json(req, what)?)
            }
        };
        let token = http::str_field(&answer, "access_token", what)?.to_owned();
        let expires_at = match http::seconds_field(&answer, "expires_in", what)? {
            Some(s) => Some(sent + Duration::from_secs(s)),
            None => http::seconds_field(&answer, "expires_on", what)?
                .map(|t| UNIX_EPOCH + Duration::from_secs(t)),
        };
        if expires_at.is_some_and(|t| t <= SystemTime::now()) {
            return Err(PluginError::new(format!(
                "{what}: the access token is already expired"
            )));
        }
        Ok(EntraToken {
            token: Secret::new(token),
            expires_at,
        })
    }

    fn post(&self, url: &url::Url, body: String) -> reqwest::blocking::RequestBuilder {
        self.client
            .post(url.as_str())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
    }

    fn exchange(&self, entra: &EntraToken) -> Result<Credential, PluginError> {
        let what = format!("ACR token exchange at {}", self.registry);
        let tenant = self.tenant.clone().or_else(|| {
            http::jwt_claims(entra.token.expose())
                .and_then(|c| c.get("tid").and_then(|t| t.as_str()).map(str::to_owned))
        });
        let mut form = vec![
            ("grant_type", "access_token"),
            ("service", self.registry.as_str()),
            ("access_token", entra.token.expose()),
        ];
        if let Some(t) = &tenant {
            form.push(("tenant", t));
        }
        let answer = http::send_json(self.post(&self.exchange_url, http::form(&form)), &what)?;
        let refresh = http::str_field(&answer, "refresh_token", &what)?;
        let exp = http::jwt_claims(refresh)
            .and_then(|c| c.get("exp").and_then(|e| e.as_u64()))
            .map(|e| UNIX_EPOCH + Duration::from_secs(e));
        if exp.is_some_and(|t| t <= SystemTime::now()) {
            return Err(PluginError::new(format!(
                "{what}: the refresh token is already expired"
            )));
        }
        let credential = Credential::basic(USER, refresh);
        Ok(match exp.or(entra.expires_at) {
            Some(at) => credential.expiring_at(at),
            None => credential,
        })
    }
}

impl Provider for AcrProvider {
    fn fetch(&self) -> Result<Credential, PluginError> {
        let entra = self.entra_token()?;
        let credential = self.exchange(&entra)?;
        tracing::debug!(registry = %self.registry, expires_at = ?credential.expires_at, "got an ACR refresh token");
        Ok(credential)
    }
}

#[cfg(test)]
mod tests;

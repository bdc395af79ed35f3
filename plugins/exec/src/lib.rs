//! The `exec` auth provider: runs a docker credential helper at every fetch.
//!
//! Any program speaking the [docker credential helper protocol] works unchanged:
//! `docker-credential-ecr-login`, `docker-credential-gcr`, `docker-credential-acr-env`,
//! `docker-credential-pass`, `docker-credential-secretservice`, ... The plugin runs
//! `docker-credential-NAME get`, writes the server URL on its standard input and reads
//! `{"ServerURL": ..., "Username": ..., "Secret": ...}` from its standard output. A
//! `Username` of `<token>` means `Secret` is an identity (refresh) token: the host
//! exchanges it at the registry's token endpoint, as docker does.
//!
//! [docker credential helper protocol]: https://github.com/docker/docker-credential-helpers
//!
//! # Options (`providerOpts`)
//!
//! | key | required | meaning |
//! |---|---|---|
//! | `helper` | one of the two | `NAME`: runs `docker-credential-NAME`, found on the server's `PATH` |
//! | `helperPath` | one of the two | the helper's path, for one outside `PATH` |
//! | `serverURL` | no | what is written on the helper's stdin; default the registry entry's name (`https://index.docker.io/v1/` for `docker.io`), as docker passes it |
//! | `env` | no | names of the server's environment variables passed to the helper, separated by `:` (e.g. `HOME:AWS_PROFILE`) |
//! | `timeout` | no | seconds the helper may run (default 20; never past the host's deadline) |
//!
//! # Environment
//!
//! The helper gets `PATH` (the server's) and the variables named in `env=`, nothing else
//! of the server's environment: many helpers need `HOME` (to find `~/.aws`,
//! `~/.docker`, ...), which must then be listed.
//!
//! # Errors
//!
//! One line each, never the secret: the helper not found, not finishing in time, exiting
//! non-zero (with the start of what it printed; docker's "credentials not found in native
//! keychain" is reported as such), writing more than 64 KiB, or writing something that is
//! not the expected JSON.
//!
//! ```yaml
//! registries:
//! - name: 123456789012.dkr.ecr.eu-west-1.amazonaws.com
//!   auth:
//!     token:
//!       provider: exec
//!       providerOpts: helper=ecr-login,env=HOME:AWS_PROFILE:AWS_REGION
//!       expiry: 6h
//! ```

#![forbid(unsafe_code)]

mod run;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ociregistry_plugin_api::{
    CreateContext, Credential, FetchRequest, OptionSpec, PluginError, Provider, ProviderFactory,
    ProviderOpts, export_provider,
};

use run::{Program, RunError, one_line};

/// The most read from a helper's standard output.
pub const OUTPUT_LIMIT: usize = 64 * 1024;
/// The default time a helper may run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// What docker writes on a helper's stdin for Docker Hub.
pub const DOCKER_HUB_SERVER_URL: &str = "https://index.docker.io/v1/";
/// What a helper prints (and docker recognises) when it holds nothing for the server.
pub const NOT_FOUND_MESSAGE: &str = "credentials not found in native keychain";

/// The `exec` provider factory.
#[derive(Debug)]
pub struct Factory;

impl ProviderFactory for Factory {
    const NAME: &'static str = "exec";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "runs a docker credential helper (docker-credential-NAME get) at each fetch";
    const OPTIONS: &'static [OptionSpec] = &[
        OptionSpec {
            key: "helper",
            description: "NAME: runs docker-credential-NAME from PATH (or give helperPath)",
            required: false,
        },
        OptionSpec {
            key: "helperPath",
            description: "the helper's path, for one outside PATH (or give helper)",
            required: false,
        },
        OptionSpec {
            key: "serverURL",
            description: "written on the helper's stdin; default the registry name (https://index.docker.io/v1/ for docker.io)",
            required: false,
        },
        OptionSpec {
            key: "env",
            description: "server environment variables passed to the helper, :-separated (PATH always is)",
            required: false,
        },
        OptionSpec {
            key: "timeout",
            description: "seconds the helper may run; default 20",
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
        Ok(Box::new(ExecProvider::new(
            opts,
            context,
            std::env::var_os("PATH"),
        )?))
    }
}

export_provider!(Factory);

/// A configured `exec` provider.
#[derive(Debug)]
pub struct ExecProvider {
    program: Program,
    /// How the helper is named in messages.
    label: String,
    server_url: String,
    timeout: Duration,
}

impl ExecProvider {
    /// From validated options, for the registry entry in `context`, finding helpers in
    /// `path_var`.
    pub fn new(
        opts: &ProviderOpts,
        context: &CreateContext,
        path_var: Option<OsString>,
    ) -> Result<Self, PluginError> {
        let program = match (opts.get("helper"), opts.get("helperPath")) {
            (Some(_), Some(_)) => {
                return Err(PluginError::invalid_options(
                    "give either helper or helperPath, not both",
                ));
            }
            (None, None) => {
                return Err(PluginError::invalid_options(
                    "missing option: helper=NAME (runs docker-credential-NAME) or helperPath=PATH",
                ));
            }
            (Some(name), None) => {
                if name.is_empty() || name.contains(['/', '\\']) {
                    return Err(PluginError::invalid_options(format!(
                        "option \"helper\": \"{}\" is not a helper name (the part after docker-credential-); use helperPath for a path",
                        one_line(name, 64)
                    )));
                }
                PathBuf::from(format!("docker-credential-{name}"))
            }
            (None, Some(path)) => {
                let path = PathBuf::from(path);
                if !path.is_absolute() {
                    return Err(PluginError::invalid_options(
                        "option \"helperPath\" must be an absolute path",
                    ));
                }
                path
            }
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
        let server_url = match opts.get("serverURL") {
            Some(url) => url.to_owned(),
            None if context.registry == "docker.io" => DOCKER_HUB_SERVER_URL.to_owned(),
            None if !context.registry.is_empty() => context.registry.clone(),
            None => {
                return Err(PluginError::invalid_options(
                    "option \"serverURL\" is needed: this host does not pass the registry name (plugin-api 1.0)",
                ));
            }
        };
        let label = program.display().to_string();
        Ok(ExecProvider {
            program: Program {
                program,
                args: vec![OsString::from("get")],
                env: run::env_from_names(&env),
                path_var,
            },
            label,
            server_url,
            timeout,
        })
    }

    fn get(&self, deadline: Instant) -> Result<Credential, PluginError> {
        let label = &self.label;
        let output = self
            .program
            .run(self.server_url.as_bytes(), deadline, OUTPUT_LIMIT)
            .map_err(|e| match e {
                RunError::NotFound => PluginError::new(format!(
                    "credential helper {label} not found{}",
                    if self.program.program.is_absolute() {
                        ""
                    } else {
                        " on PATH"
                    }
                )),
                other => PluginError::new(format!("credential helper {label} {other}")),
            })?;
        if !output.status.success() {
            let said = String::from_utf8_lossy(&output.stdout);
            let said = said.trim();
            if said == NOT_FOUND_MESSAGE {
                return Err(PluginError::new(format!(
                    "credential helper {label} has no credentials for {} ({NOT_FOUND_MESSAGE})",
                    one_line(&self.server_url, 200)
                )));
            }
            let said = if said.is_empty() {
                String::from_utf8_lossy(&output.stderr).trim().to_owned()
            } else {
                said.to_owned()
            };
            return Err(PluginError::new(format!(
                "credential helper {label} failed ({}): {}",
                output.status,
                if said.is_empty() {
                    "no output".to_owned()
                } else {
                    one_line(&said, 300)
                }
            )));
        }
        parse_output(&output.stdout).map_err(|what| {
            PluginError::new(format!(
                "credential helper {label} printed {what}, not the {{\"Username\", \"Secret\"}} JSON of the docker credential helper protocol"
            ))
        })
    }
}

/// `docker-credential-* get`'s answer.
#[derive(serde::Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// The credential in a helper's output; the error says what was wrong without quoting it.
fn parse_output(stdout: &[u8]) -> Result<Credential, &'static str> {
    let answer: HelperAnswer = serde_json::from_slice(stdout).map_err(|e| {
        if stdout.iter().all(u8::is_ascii_whitespace) {
            "nothing"
        } else if e.is_data() {
            "JSON without a string Username and Secret"
        } else {
            "malformed JSON"
        }
    })?;
    if answer.secret.is_empty() {
        return Err("an empty Secret");
    }
    if answer.username == "<token>" {
        Ok(Credential::identity_token(answer.secret))
    } else if answer.username.is_empty() {
        Err("an empty Username")
    } else {
        Ok(Credential::basic(answer.username, answer.secret))
    }
}

impl Provider for ExecProvider {
    fn fetch(&self) -> Result<Credential, PluginError> {
        self.get(Instant::now() + self.timeout)
    }

    fn fetch_with(&self, request: &FetchRequest) -> Result<Credential, PluginError> {
        let allowed = self.timeout.min(request.time_left());
        self.get(Instant::now() + allowed)
    }
}

#[cfg(test)]
mod tests;

//! The `ecr` auth provider: gets an Amazon ECR registry token with GetAuthorizationToken,
//! like `aws ecr get-authorization-token`.
//!
//! The AWS SDK finds its identity the usual way: environment variables, the shared
//! config and credentials files (`AWS_PROFILE`, `AWS_CONFIG_FILE`, ...), SSO, web identity
//! (EKS IRSA / pod identity), ECS container credentials and the EC2 instance role. The SDK
//! also honours `AWS_ENDPOINT_URL_ECR` / `AWS_ENDPOINT_URL` (e.g. a VPC endpoint, or a
//! local test server).
//!
//! # Options (`providerOpts`)
//!
//! | key | meaning |
//! |---|---|
//! | `profile` | the profile in `~/.aws/config` / `~/.aws/credentials`; default: the SDK's (`AWS_PROFILE` or `default`) |
//! | `region` | the AWS region, e.g. `us-east-1`; default: the SDK's (`AWS_REGION`, the profile, IMDS) |
//!
//! The token decodes to `AWS:<password>`; the provider returns the Basic credential
//! `AWS` / `<password>` with the token's expiry (12 hours after issue on AWS).

#![forbid(unsafe_code)]

use std::time::SystemTime;

use aws_config::BehaviorVersion;
use base64::Engine as _;
use ociregistry_plugin_api::tracing::{self, Level};
use ociregistry_plugin_api::{
    Credential, OptionSpec, PluginError, Provider, ProviderFactory, ProviderOpts, export_provider,
};

/// The `ecr` provider factory.
#[derive(Debug)]
pub struct Factory;

impl ProviderFactory for Factory {
    const NAME: &'static str = "ecr";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "AWS ECR registry token (GetAuthorizationToken) through the AWS SDK's default credential chain";
    const OPTIONS: &'static [OptionSpec] = &[
        OptionSpec {
            key: "profile",
            description: "AWS shared config profile; default: AWS_PROFILE or default",
            required: false,
        },
        OptionSpec {
            key: "region",
            description: "AWS region, e.g. us-east-1; default: AWS_REGION, the profile or IMDS",
            required: false,
        },
    ];

    fn create(opts: &ProviderOpts) -> Result<Box<dyn Provider>, PluginError> {
        Ok(Box::new(EcrProvider::new(opts)?))
    }

    /// The SDK's TRACE events print whole requests and responses, the token included.
    fn log_enabled(target: &str, level: Level) -> bool {
        level < Level::TRACE || target.starts_with("ociregistry_provider_ecr")
    }
}

export_provider!(Factory);

/// A configured `ecr` provider: its own tokio runtime and one ECR client.
pub struct EcrProvider {
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_ecr::Client,
    profile: Option<String>,
}

impl std::fmt::Debug for EcrProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcrProvider")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl EcrProvider {
    fn new(opts: &ProviderOpts) -> Result<Self, PluginError> {
        let profile = opts
            .get("profile")
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        let region = opts
            .get("region")
            .filter(|r| !r.is_empty())
            .map(str::to_owned);
        // The host's runtime is another copy of tokio that this library cannot use.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("ociregistry-ecr")
            .build()
            .map_err(|e| PluginError::from_error("creating the tokio runtime", &e))?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(p) = &profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        let config = runtime.block_on(loader.load());
        if config.region().is_none() {
            return Err(PluginError::invalid_options(
                "no AWS region: set region= in providerOpts, AWS_REGION, or a region in the profile",
            ));
        }
        tracing::debug!(
            profile = profile.as_deref().unwrap_or("(default)"),
            region = %config.region().map(|r| r.as_ref()).unwrap_or_default(),
            "ECR client configured"
        );
        let client = aws_sdk_ecr::Client::new(&config);
        Ok(EcrProvider {
            runtime,
            client,
            profile,
        })
    }
}

impl Provider for EcrProvider {
    fn fetch(&self) -> Result<Credential, PluginError> {
        let output = self
            .runtime
            .block_on(self.client.get_authorization_token().send())
            .map_err(|e| PluginError::from_error("ECR GetAuthorizationToken", &e))?;
        let data = output.authorization_data().first().ok_or_else(|| {
            PluginError::new("ECR GetAuthorizationToken returned no authorization data")
        })?;
        let token = data
            .authorization_token()
            .ok_or_else(|| PluginError::new("ECR GetAuthorizationToken returned no token"))?;
        let expires_at = data
            .expires_at()
            .and_then(|t| SystemTime::try_from(*t).ok());
        let credential = decode_token(token)?;
        tracing::debug!(expires_at = ?data.expires_at(), "got ECR authorization token");
        Ok(match expires_at {
            Some(at) => credential.expiring_at(at),
            None => credential,
        })
    }
}

/// Decodes ECR's base64 `user:password` token (the user is always `AWS`).
fn decode_token(token: &str) -> Result<Credential, PluginError> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| PluginError::new("ECR authorization token is not valid base64"))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| PluginError::new("ECR authorization token is not UTF-8"))?;
    match decoded.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => {
            Ok(Credential::basic(user, password))
        }
        _ => Err(PluginError::new(
            "ECR authorization token does not decode to user:password",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ociregistry_plugin_api::CredentialKind;

    #[test]
    fn decodes_tokens() {
        // base64("AWS:123456789012-auth-token"), as moto answers.
        let c = decode_token("QVdTOjEyMzQ1Njc4OTAxMi1hdXRoLXRva2Vu").unwrap();
        match c.kind {
            CredentialKind::Basic { user, secret } => {
                assert_eq!(user, "AWS");
                assert_eq!(secret.expose(), "123456789012-auth-token");
            }
            other => panic!("{other:?}"),
        }
        for bad in ["%%%", "aHVudGVyMg==", "Omh1bnRlcjI="] {
            let e = decode_token(bad).unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn options() {
        let e =
            ProviderOpts::parse(Factory::NAME, "profile=a,regin=x", Factory::OPTIONS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "providerOpts for provider \"ecr\": unknown option \"regin\"; accepted: profile, region"
        );
        let o = ProviderOpts::parse(
            Factory::NAME,
            "profile=Dev,region=us-east-1",
            Factory::OPTIONS,
        )
        .unwrap();
        assert_eq!(o.get("profile"), Some("Dev"));
    }

    #[test]
    fn sdk_trace_events_are_kept_out() {
        assert!(!Factory::log_enabled(
            "aws_smithy_runtime::client::orchestrator",
            Level::TRACE
        ));
        assert!(Factory::log_enabled(
            "aws_smithy_runtime::client::orchestrator",
            Level::DEBUG
        ));
        assert!(Factory::log_enabled(
            "ociregistry_provider_ecr",
            Level::TRACE
        ));
    }
}

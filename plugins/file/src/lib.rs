//! The `file` auth provider: reads a credential from a file at every fetch.
//!
//! Made for secrets that something else keeps up to date on disk: a Vault agent template,
//! a Kubernetes projected secret or service account token, a sidecar. The file is read
//! afresh on every fetch, so a rotated secret is picked up at the next refresh (set the
//! registry's `expiry` to how often it may change).
//!
//! # Options (`providerOpts`)
//!
//! | key | required | meaning |
//! |---|---|---|
//! | `path` | yes | the file to read |
//! | `scheme` | no | `basic` (default) or `bearer` |
//! | `user` | no | with `scheme=basic`: the user name; the file then holds only the password |
//!
//! # File formats
//!
//! A trailing line ending (`\n` or `\r\n`) is ignored; the rest must be one line.
//!
//! - `scheme=basic` without `user`: `user:password` (split at the first `:`, so the
//!   password may contain `:`; the user may not be empty).
//! - `scheme=basic` with `user=NAME`: the password alone.
//! - `scheme=bearer`: the token alone (surrounding whitespace is ignored).
//!
//! Errors name the file and what is wrong with it, never its content.
//!
//! ```yaml
//! registries:
//! - name: registry.example.com
//!   auth:
//!     token:
//!       provider: file
//!       providerOpts: path=/vault/secrets/registry,scheme=basic
//!       expiry: 10m
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;

use ociregistry_plugin_api::{
    Credential, OptionSpec, PluginError, Provider, ProviderFactory, ProviderOpts, export_provider,
    tracing,
};

/// The `file` provider factory.
#[derive(Debug)]
pub struct Factory;

impl ProviderFactory for Factory {
    const NAME: &'static str = "file";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "reads user:password (Basic) or a token (Bearer) from a file at each fetch";
    const OPTIONS: &'static [OptionSpec] = &[
        OptionSpec {
            key: "path",
            description: "the file holding the credential",
            required: true,
        },
        OptionSpec {
            key: "scheme",
            description: "basic (file: user:password, or the password with user=) or bearer (file: the token); default basic",
            required: false,
        },
        OptionSpec {
            key: "user",
            description: "with scheme=basic: the user name, the file holding only the password",
            required: false,
        },
    ];

    fn create(opts: &ProviderOpts) -> Result<Box<dyn Provider>, PluginError> {
        Ok(Box::new(FileProvider::from_opts(opts)?))
    }
}

export_provider!(Factory);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    /// `user:password`, or the password with the user from the options.
    Basic {
        user: Option<String>,
    },
    Bearer,
}

/// A configured `file` provider.
#[derive(Debug)]
pub struct FileProvider {
    path: PathBuf,
    scheme: Scheme,
}

impl FileProvider {
    fn from_opts(opts: &ProviderOpts) -> Result<Self, PluginError> {
        let path = PathBuf::from(opts.required("path")?);
        if path.as_os_str().is_empty() {
            return Err(PluginError::invalid_options("option \"path\" is empty"));
        }
        let user = opts.get("user").map(str::to_owned);
        let scheme = match opts.get("scheme").unwrap_or("basic") {
            s if s.eq_ignore_ascii_case("basic") => Scheme::Basic { user },
            s if s.eq_ignore_ascii_case("bearer") => {
                if user.is_some() {
                    return Err(PluginError::invalid_options(
                        "option \"user\" only applies to scheme=basic",
                    ));
                }
                Scheme::Bearer
            }
            other => {
                return Err(PluginError::invalid_options(format!(
                    "option \"scheme\": invalid value \"{other}\"; expected basic or bearer"
                )));
            }
        };
        if let Scheme::Basic { user: Some(u) } = &scheme {
            if u.is_empty() || u.contains(':') {
                return Err(PluginError::invalid_options(
                    "option \"user\" must be non-empty and contain no ':'",
                ));
            }
        }
        Ok(FileProvider { path, scheme })
    }

    fn parse(&self, content: &str) -> Result<Credential, PluginError> {
        let shown = self.path.display();
        let line = content
            .strip_suffix('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .unwrap_or(content);
        if line.contains('\n') {
            return Err(PluginError::new(format!(
                "credential file {shown}: expected one line, found several"
            )));
        }
        match &self.scheme {
            Scheme::Bearer => {
                let token = line.trim();
                if token.is_empty() {
                    return Err(PluginError::new(format!(
                        "credential file {shown}: empty token"
                    )));
                }
                Ok(Credential::bearer(token))
            }
            Scheme::Basic { user: Some(user) } => {
                if line.is_empty() {
                    return Err(PluginError::new(format!(
                        "credential file {shown}: empty password"
                    )));
                }
                Ok(Credential::basic(user.clone(), line))
            }
            Scheme::Basic { user: None } => {
                let Some((user, password)) = line.split_once(':') else {
                    return Err(PluginError::new(format!(
                        "credential file {shown}: expected user:password (no ':' found; \
                         for a file holding only the password set the user= option)"
                    )));
                };
                if user.is_empty() {
                    return Err(PluginError::new(format!(
                        "credential file {shown}: empty user name before ':'"
                    )));
                }
                Ok(Credential::basic(user, password))
            }
        }
    }
}

impl Provider for FileProvider {
    fn fetch(&self) -> Result<Credential, PluginError> {
        let content = std::fs::read_to_string(&self.path).map_err(|e| {
            PluginError::new(format!(
                "cannot read credential file {}: {e}",
                self.path.display()
            ))
        })?;
        let credential = self.parse(&content)?;
        tracing::debug!(path = %self.path.display(), "read credential file");
        Ok(credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ociregistry_plugin_api::{CredentialKind, PluginErrorKind};
    use std::io::Write;

    fn provider(opts: &str) -> Result<FileProvider, PluginError> {
        let opts = ProviderOpts::parse(Factory::NAME, opts, Factory::OPTIONS)?;
        FileProvider::from_opts(&opts)
    }

    fn with_file(content: &str, opts: &str) -> Result<Credential, PluginError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        let p = provider(&format!("path={},{opts}", f.path().display()))?;
        p.fetch()
    }

    fn basic(c: &Credential) -> (&str, &str) {
        match &c.kind {
            CredentialKind::Basic { user, secret } => (user, secret.expose()),
            other => panic!("not basic: {other:?}"),
        }
    }

    #[test]
    fn basic_user_password() {
        let c = with_file("alice:pa:ss word\n", "").unwrap();
        assert_eq!(basic(&c), ("alice", "pa:ss word"));
        assert_eq!(c.expires_at, None);
        let c = with_file("bob:x\r\n", "scheme=Basic").unwrap();
        assert_eq!(basic(&c), ("bob", "x"));
    }

    #[test]
    fn basic_password_only() {
        let c = with_file("s3cret\n", "user=robot$ci").unwrap();
        assert_eq!(basic(&c), ("robot$ci", "s3cret"));
    }

    #[test]
    fn bearer() {
        let c = with_file("  eyJhbGciOi.abc.def \n", "scheme=bearer").unwrap();
        match c.kind {
            CredentialKind::Bearer { token } => assert_eq!(token.expose(), "eyJhbGciOi.abc.def"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_again_at_each_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "one").unwrap();
        let p = provider(&format!("path={},scheme=bearer", path.display())).unwrap();
        assert_eq!(p.fetch().unwrap(), Credential::bearer("one"));
        std::fs::write(&path, "two\n").unwrap();
        assert_eq!(p.fetch().unwrap(), Credential::bearer("two"));
    }

    #[test]
    fn bad_files_never_show_the_content() {
        for (content, opts, want) in [
            ("hunter2\n", "", "expected user:password"),
            (":hunter2", "", "empty user name"),
            ("a:hunter2\nb:hunter2\n", "", "expected one line"),
            ("", "user=x", "empty password"),
            (" \n", "scheme=bearer", "empty token"),
        ] {
            let e = with_file(content, opts).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(want), "{msg}");
            assert!(!msg.contains("hunter2"), "{msg}");
            assert_eq!(e.kind(), PluginErrorKind::Failed);
        }
    }

    #[test]
    fn missing_file() {
        let e = provider("path=/nonexistent/token")
            .unwrap()
            .fetch()
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read credential file /nonexistent/token: "),
            "{e}"
        );
    }

    #[test]
    fn bad_options() {
        let e = provider("scheme=basic").unwrap_err();
        assert!(
            e.to_string().contains("missing required option \"path\""),
            "{e}"
        );
        let e = provider("path=/x,scheme=digest").unwrap_err();
        assert_eq!(
            e.to_string(),
            "option \"scheme\": invalid value \"digest\"; expected basic or bearer"
        );
        let e = provider("path=/x,scheme=bearer,user=u").unwrap_err();
        assert_eq!(e.kind(), PluginErrorKind::InvalidOptions);
        let e = provider("path=/x,token=abc").unwrap_err();
        assert!(
            e.to_string().contains("accepted: path, scheme, user"),
            "{e}"
        );
    }
}

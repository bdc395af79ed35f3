//! The `storage:` section (beyond Ociregistry): where the cache lives, the filesystem at
//! `imagePath` (the default) or an S3-compatible bucket with a local read-through copy. Its
//! keys as written, checked and resolved into plain [`StorageSettings`]; credentials are read
//! from the environment variables the file names. It opens no connection and builds no
//! client (the store does, from these settings).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::ConfigError;
use super::error::{Rejected, Source};
use super::inventory::ByteSize;
use super::position::Step::{self, Key};

/// The region when `storage.s3.region` is not given (also what MinIO and s3s-fs expect).
pub const DEFAULT_S3_REGION: &str = "us-east-1";
/// Longest `storage.s3.prefix`, in bytes: object keys (prefix, then the digest paths) must
/// stay well under S3's 1024-byte limit.
pub const MAX_S3_PREFIX_LEN: usize = 512;

/// `storage` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageConfig {
    /// The bucket (absent: the filesystem at `imagePath`).
    #[serde(default, deserialize_with = "present")]
    pub s3: Option<S3Config>,
    /// The local read-through copy and staging area (only with `s3`).
    #[serde(default, deserialize_with = "present")]
    pub local_cache: Option<LocalCacheConfig>,
    /// Answer warm blob GETs with a 307 to a presigned URL (only with `s3`).
    pub redirect: Option<bool>,
}

/// `storage.s3` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct S3Config {
    /// The bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket.
    pub prefix: Option<String>,
    /// Signing region (default `us-east-1`).
    pub region: Option<String>,
    /// An S3-compatible server (MinIO, Ceph RGW, s3s-fs): path-style requests.
    pub endpoint: Option<String>,
    /// Name of the environment variable holding the access key id.
    pub access_key_id_from_env: Option<String>,
    /// Name of the environment variable holding the secret access key.
    pub secret_access_key_from_env: Option<String>,
    /// Name of the environment variable holding a session token.
    pub session_token_from_env: Option<String>,
}

/// `storage.localCache` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalCacheConfig {
    /// Directory of the local copy (default: `imagePath`).
    pub path: Option<PathBuf>,
    /// Bound on the local copy.
    pub max_size: Option<ByteSize>,
}

/// A key that, once written, is read as its type even when empty: `s3:` with nothing under it
/// is a bucket-less `s3`, refused, not a silent "no s3".
pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Where the cache is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Everything under `imagePath` (the default, Ociregistry's layout).
    Filesystem,
    /// An S3-compatible bucket, with a local read-through copy.
    S3(S3Settings),
}

/// The `storage` section, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    /// Filesystem or bucket.
    pub backend: Backend,
    /// The local directory: the whole cache (filesystem), or the read-through copy and
    /// staging area (S3); `storage.localCache.path`, default `imagePath`.
    pub local_path: PathBuf,
    /// `storage.localCache.maxSize`: bound of the local copy, in bytes.
    pub local_max_size: Option<u64>,
    /// `storage.redirect`: warm blob GETs answer 307 to a presigned URL.
    pub redirect: bool,
}

impl StorageSettings {
    /// The default: the filesystem at `image_path`.
    pub fn filesystem(image_path: &Path) -> StorageSettings {
        StorageSettings {
            backend: Backend::Filesystem,
            local_path: image_path.to_owned(),
            local_max_size: None,
            redirect: false,
        }
    }
}

/// `storage.s3`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// Bucket name, checked against S3's naming rules.
    pub bucket: String,
    /// Key prefix: empty, or without leading `/` and with exactly one trailing `/`.
    pub prefix: String,
    /// Signing region.
    pub region: String,
    /// `scheme://host[:port]` of an S3-compatible server (path-style requests); `None`: AWS.
    pub endpoint: Option<String>,
    /// Static credentials from the environment; `None`: the AWS SDK's default chain.
    pub credentials: Option<S3Credentials>,
}

/// Static S3 credentials, read from the environment variables the config names. Debug shows
/// the key id's first 4 characters and nothing of the secret or token.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token (temporary credentials).
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Shown<'a>(&'a str);
        impl fmt::Debug for Shown<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        let head: String = self.access_key_id.chars().take(4).collect();
        let id = format!("{head}...");
        f.debug_struct("S3Credentials")
            .field("access_key_id", &Shown(&id))
            .field("secret_access_key", &Shown("<redacted>"))
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| Shown("<redacted>")),
            )
            .finish()
    }
}

/// The message of `localCache` or `redirect` written without `s3`.
const NEEDS_S3: &str = "the filesystem store keeps everything at imagePath";

impl StorageSettings {
    /// Checks `storage` and reads its credentials; `image_path` is the resolved `imagePath`
    /// (flag or file), the default of `localCache.path`.
    pub(crate) fn resolve(
        src: Source<'_>,
        storage: Option<&StorageConfig>,
        image_path: &Path,
    ) -> Result<StorageSettings, ConfigError> {
        let Some(st) = storage else {
            return Ok(StorageSettings::filesystem(image_path));
        };
        let Some(s3) = &st.s3 else {
            if st.local_cache.is_some() {
                return Err(src.invalid(
                    "storage.localCache",
                    &[Key("storage"), Key("localCache")],
                    format!("needs storage.s3; {NEEDS_S3}"),
                ));
            }
            if st.redirect.is_some() {
                return Err(src.invalid(
                    "storage.redirect",
                    &[Key("storage"), Key("redirect")],
                    format!("needs storage.s3; {NEEDS_S3}"),
                ));
            }
            return Ok(StorageSettings::filesystem(image_path));
        };
        let local = st.local_cache.clone().unwrap_or_default();
        if local
            .path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(src.invalid(
                "storage.localCache.path",
                &[Key("storage"), Key("localCache"), Key("path")],
                "is empty (leave it out for imagePath)",
            ));
        }
        Ok(StorageSettings {
            backend: Backend::S3(s3_settings(src, s3)?),
            local_path: local.path.unwrap_or_else(|| image_path.to_owned()),
            local_max_size: local.max_size.map(|b| b.0),
            redirect: st.redirect.unwrap_or(false),
        })
    }
}

/// The key path `storage.s3.<key>` as steps, for its line.
fn s3_at(key: &str) -> [Step<'_>; 3] {
    [Key("storage"), Key("s3"), Key(key)]
}

fn s3_settings(src: Source<'_>, s3: &S3Config) -> Result<S3Settings, ConfigError> {
    let invalid =
        |key: &str, message: String| src.invalid(format!("storage.s3.{key}"), &s3_at(key), message);
    check_bucket(&s3.bucket).map_err(|m| invalid("bucket", m.0))?;
    let prefix = match &s3.prefix {
        Some(p) => normalise_prefix(p).map_err(|m| invalid("prefix", m.0))?,
        None => String::new(),
    };
    let region = match &s3.region {
        Some(r) => check_region(r).map_err(|m| invalid("region", m.0))?,
        None => DEFAULT_S3_REGION.to_owned(),
    };
    let endpoint = s3
        .endpoint
        .as_deref()
        .map(check_endpoint)
        .transpose()
        .map_err(|m| invalid("endpoint", m.0))?;
    Ok(S3Settings {
        bucket: s3.bucket.clone(),
        prefix,
        region,
        endpoint,
        credentials: credentials(src, s3)?,
    })
}

/// The value of the environment variable `var` that `storage.s3.<key>` names.
fn from_env(src: Source<'_>, key: &str, var: &str) -> Result<String, ConfigError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(src.invalid(
            format!("storage.s3.{key}"),
            &s3_at(key),
            format!("environment variable {var} is not set or empty"),
        )),
    }
}

/// `accessKeyIdFromEnv` and `secretAccessKeyFromEnv` (both or neither), `sessionTokenFromEnv`
/// (only with them).
fn credentials(src: Source<'_>, s3: &S3Config) -> Result<Option<S3Credentials>, ConfigError> {
    const ID: &str = "accessKeyIdFromEnv";
    const SECRET: &str = "secretAccessKeyFromEnv";
    const TOKEN: &str = "sessionTokenFromEnv";
    let pair = |given: &str, missing: &str| {
        src.invalid(
            format!("storage.s3.{given}"),
            &s3_at(given),
            format!(
                "needs storage.s3.{missing} too: give both, or neither for the AWS SDK's \
                 default credential chain"
            ),
        )
    };
    let (id_var, secret_var) = match (&s3.access_key_id_from_env, &s3.secret_access_key_from_env) {
        (Some(id), Some(secret)) => (id, secret),
        (Some(_), None) => return Err(pair(ID, SECRET)),
        (None, Some(_)) => return Err(pair(SECRET, ID)),
        (None, None) => {
            if s3.session_token_from_env.is_some() {
                return Err(src.invalid(
                    format!("storage.s3.{TOKEN}"),
                    &s3_at(TOKEN),
                    format!("needs storage.s3.{ID} and storage.s3.{SECRET}"),
                ));
            }
            return Ok(None);
        }
    };
    Ok(Some(S3Credentials {
        access_key_id: from_env(src, ID, id_var)?,
        secret_access_key: from_env(src, SECRET, secret_var)?,
        session_token: s3
            .session_token_from_env
            .as_deref()
            .map(|var| from_env(src, TOKEN, var))
            .transpose()?,
    }))
}

/// S3's bucket naming rules: 3 to 63 characters, lowercase letters, digits, `.` and `-`,
/// starting and ending with a letter or digit, no `..`, not an IPv4 address, none of the
/// reserved prefixes and suffixes.
fn check_bucket(b: &str) -> Result<(), Rejected> {
    let rules = "3 to 63 characters: lowercase letters, digits, '.' and '-', \
                 starting and ending with a letter or digit";
    if !(3..=63).contains(&b.len()) {
        return Err(Rejected(format!(
            "{b:?} is not a valid bucket name ({rules})"
        )));
    }
    if let Some(c) = b
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-')))
    {
        return Err(Rejected(format!(
            "{b:?} is not a valid bucket name: {c:?} is not allowed ({rules})"
        )));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !alnum(b.chars().next()) || !alnum(b.chars().last()) {
        return Err(Rejected(format!(
            "{b:?} is not a valid bucket name ({rules})"
        )));
    }
    if b.contains("..") {
        return Err(Rejected(format!(
            "{b:?} is not a valid bucket name: two periods in a row"
        )));
    }
    if b.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(Rejected(format!(
            "{b:?} is not a valid bucket name: it is formatted as an IP address"
        )));
    }
    let reserved = ["xn--", "sthree-", "amzn-s3-demo-"]
        .iter()
        .any(|p| b.starts_with(p))
        || ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"]
            .iter()
            .any(|s| b.ends_with(s));
    if reserved {
        return Err(Rejected(format!(
            "{b:?} is not a valid bucket name: it uses a prefix or suffix S3 reserves"
        )));
    }
    Ok(())
}

/// The prefix without leading `/` and with one trailing `/` (empty stays empty); no empty,
/// `.` or `..` segments, no control characters.
fn normalise_prefix(p: &str) -> Result<String, Rejected> {
    let trimmed = p.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Rejected(format!("{p:?} holds a control character")));
    }
    if trimmed
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(Rejected(format!(
            "{p:?}: empty, '.' and '..' segments are not allowed"
        )));
    }
    let prefix = format!("{trimmed}/");
    if prefix.len() > MAX_S3_PREFIX_LEN {
        return Err(Rejected(format!(
            "is longer than {MAX_S3_PREFIX_LEN} bytes"
        )));
    }
    Ok(prefix)
}

/// A region name: letters, digits, `-` and `_`, at most 64 characters.
fn check_region(r: &str) -> Result<String, Rejected> {
    let ok = !r.is_empty()
        && r.len() <= 64
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !ok {
        return Err(Rejected(format!(
            "{r:?} is not a region name (letters, digits, '-' and '_', e.g. eu-west-1)"
        )));
    }
    Ok(r.to_owned())
}

/// An `http://` or `https://` URL with a host, an optional port and nothing else, as
/// `scheme://host[:port]`. The value is not echoed when it holds user info (it may be a
/// credential).
fn check_endpoint(e: &str) -> Result<String, Rejected> {
    let example = "e.g. http://127.0.0.1:9000 or https://s3.example.com";
    // `user:secret@` may be there even when the URL does not parse: then it is not echoed.
    let shown = if e.contains('@') {
        "the endpoint".to_owned()
    } else {
        format!("{e:?}")
    };
    let url = url::Url::parse(e)
        .map_err(|err| Rejected(format!("{shown} is not a URL ({err}; {example})")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Rejected(
            "holds user info: give credentials with accessKeyIdFromEnv and \
             secretAccessKeyFromEnv, never in the URL"
                .to_owned(),
        ));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Rejected(format!(
            "{e:?}: the scheme must be http or https ({example})"
        )));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(Rejected(format!("{e:?} has no host ({example})")));
    };
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(Rejected(format!(
            "{e:?} has a path, query or fragment: give only scheme, host and port \
             (the bucket goes in storage.s3.bucket, a key prefix in storage.s3.prefix)"
        )));
    }
    Ok(match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in ["mirror-cache", "abc", "a.b-c.1", &"a".repeat(63)] {
            assert!(check_bucket(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "Mirror",
            "mirror_cache",
            "-mirror",
            "mirror-",
            ".mirror",
            "a..b",
            "192.168.1.1",
            "xn--abc",
            "data-s3alias",
            "a b c",
        ] {
            assert!(check_bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalise_prefix("ociregistry/").unwrap(), "ociregistry/");
        assert_eq!(normalise_prefix("/ociregistry").unwrap(), "ociregistry/");
        assert_eq!(normalise_prefix("//a/b//").unwrap(), "a/b/");
        assert_eq!(normalise_prefix("/").unwrap(), "");
        assert_eq!(normalise_prefix("").unwrap(), "");
        for bad in ["a/../b", "..", "a/./b", "a//b", "a\nb", &"a".repeat(600)] {
            assert!(normalise_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            check_endpoint("http://127.0.0.1:9000").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            check_endpoint("https://S3.Example.com/").unwrap(),
            "https://s3.example.com"
        );
        assert_eq!(
            check_endpoint("http://[::1]:9000").unwrap(),
            "http://[::1]:9000"
        );
        for bad in [
            "127.0.0.1:9000",
            "ftp://a.example",
            "http://a.example/bucket",
            "http://a.example/?x=1",
            "http://a.example/#f",
            "file:///tmp",
            "",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
        let e = check_endpoint("http://AKIA:hunter2@a.example")
            .unwrap_err()
            .0;
        assert!(!e.contains("hunter2") && e.contains("user info"), "{e}");
        let e = check_endpoint("http://AKIA:hunter2@").unwrap_err().0;
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn regions() {
        assert!(check_region("eu-west-1").is_ok());
        assert!(check_region("default").is_ok());
        for bad in ["", "eu west", "eu/west", &"a".repeat(65)] {
            assert!(check_region(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_debug_hides_the_secrets() {
        let c = S3Credentials {
            access_key_id: "AKIAEXAMPLEKEY".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            session_token: Some("FwoGZXIvYXdzEJr".into()),
        };
        let d = format!("{c:?}");
        assert!(d.contains("AKIA...") && d.contains("<redacted>"), "{d}");
        for hidden in ["EXAMPLEKEY", "wJalrXUtnFEMI", "FwoGZXIvYXdzEJr"] {
            assert!(!d.contains(hidden), "{d}");
        }
    }
}

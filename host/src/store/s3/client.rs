//! The S3 client side of [`super::S3Store`]: the bucket handles built from [`S3Options`]
//! (timeouts, retries, credentials), the check that the bucket is usable at open, and the
//! wording of what failed there. It knows nothing of the cache layout beyond the probe key.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use super::S3Options;
use crate::store::error::StoreError;

/// Time allowed to connect to the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one whole request (not for streamed blob reads: see [`Profile`]).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for a streamed read to make progress.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for the check at open, retries included.
pub(super) const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a bucket handle is used for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Profile {
    /// Small requests: each bounded as a whole, a few retries.
    Requests,
    /// Streamed blob reads: a body may take long, so only progress is bounded.
    Streams,
    /// The check at open: no retries, so that what failed is reported at once.
    Probe,
}

/// A bucket handle for `profile`.
pub(super) fn build(opts: &S3Options, profile: Profile) -> Result<Arc<AmazonS3>, StoreError> {
    let mut client = ClientOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
    client = match profile {
        Profile::Requests | Profile::Probe => client.with_timeout(REQUEST_TIMEOUT),
        Profile::Streams => client
            .with_timeout_disabled()
            .with_read_timeout(READ_TIMEOUT),
    };
    let retry = RetryConfig {
        max_retries: match profile {
            Profile::Probe => 0,
            Profile::Requests | Profile::Streams => 3,
        },
        retry_timeout: Duration::from_secs(60),
        ..RetryConfig::default()
    };
    let mut builder = match &opts.credentials {
        // Environment keys, web identity, container credentials, instance metadata.
        None => AmazonS3Builder::from_env(),
        Some(keys) => {
            let b = AmazonS3Builder::new()
                .with_access_key_id(&keys.access_key_id)
                .with_secret_access_key(&keys.secret_access_key);
            match &keys.session_token {
                Some(t) => b.with_token(t),
                None => b,
            }
        }
    };
    builder = builder
        .with_bucket_name(&opts.bucket)
        .with_region(&opts.region)
        .with_virtual_hosted_style_request(false)
        .with_client_options(client)
        .with_retry(retry);
    if let Some(endpoint) = &opts.endpoint {
        builder = builder.with_endpoint(endpoint).with_allow_http(true);
    }
    builder
        .build()
        .map(Arc::new)
        .map_err(|e| bucket_error(opts, format!("unusable settings: {e}")))
}

/// Checks that the bucket exists and that the credentials may list and read it: one listing
/// of a key prefix under which nothing is stored, bounded by [`OPEN_TIMEOUT`].
/// The failure is a [`StoreError::Bucket`] naming `name` at `place` and what failed.
pub(super) async fn probe(
    bucket: &AmazonS3,
    key: &Key,
    name: &str,
    place: &str,
) -> Result<(), StoreError> {
    let listing = bucket.list_with_delimiter(Some(key));
    let reason = match tokio::time::timeout(OPEN_TIMEOUT, listing).await {
        Ok(Ok(_)) => return Ok(()),
        Err(_) => format!("no answer within {} s", OPEN_TIMEOUT.as_secs()),
        Ok(Err(e)) => failure(&e),
    };
    Err(StoreError::Bucket {
        bucket: name.to_owned(),
        endpoint: place.to_owned(),
        reason,
    })
}

/// A small JSON object (tag record, lease) as read (`None` inside: unreadable) and the
/// ETag it was read with, for a conditional write back; `None` when there is none.
pub(super) type Versioned<T> = Option<(Option<T>, Option<String>)>;

/// Reads the JSON object `key` with its ETag.
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    bucket: &AmazonS3,
    key: &Key,
) -> Result<Versioned<T>, StoreError> {
    let got = match bucket.get(key).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let e_tag = got.meta.e_tag.clone();
    let bytes = got.bytes().await?;
    Ok(Some((serde_json::from_slice(&bytes).ok(), e_tag)))
}

/// Writes the JSON `json` as the object `key` with `mode` (a conditional create or
/// update); `Some(new ETag)`, or `None` when another writer was first (the condition failed).
pub(super) async fn write_json(
    bucket: &AmazonS3,
    key: &Key,
    json: Vec<u8>,
    mode: object_store::PutMode,
) -> Result<Option<Option<String>>, StoreError> {
    let mut attributes = object_store::Attributes::new();
    attributes.insert(
        object_store::Attribute::ContentType,
        "application/json".into(),
    );
    let opts = object_store::PutOptions {
        mode,
        attributes,
        ..object_store::PutOptions::default()
    };
    match bucket
        .put_opts(key, bytes::Bytes::from(json).into(), opts)
        .await
    {
        Ok(put) => Ok(Some(put.e_tag)),
        Err(
            object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. },
        ) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What an error at open means, for the operator (no secret: object_store's messages
/// carry the URL and the server's answer, never the signing key). Listing errors come back
/// as generic ones, so the status and S3 code are read from the text.
fn failure(e: &object_store::Error) -> String {
    use object_store::Error as E;
    let text = chain(e);
    let code = s3_code(&text);
    let denied = matches!(e, E::PermissionDenied { .. } | E::Unauthenticated { .. })
        || text.contains("403 Forbidden")
        || text.contains("401 Unauthorized")
        || matches!(
            code,
            Some(
                "AccessDenied"
                    | "SignatureDoesNotMatch"
                    | "InvalidAccessKeyId"
                    | "ExpiredToken"
                    | "InvalidToken"
            )
        );
    let missing = code == Some("NoSuchBucket")
        || (code.is_none() && (matches!(e, E::NotFound { .. }) || text.contains("404 Not Found")));
    if missing {
        "no such bucket (check the bucket name and endpoint)".into()
    } else if denied {
        match code {
            Some(code) => format!("access denied ({code}; check the access key and secret)"),
            None => "access denied (check the access key and secret)".into(),
        }
    } else if text.contains("(Connect)") || text.contains("connect error") {
        format!("unreachable ({})", innermost(e))
    } else {
        format!("request failed: {text}")
    }
}

/// The deepest source of an error (the one that says what really happened).
fn innermost(e: &dyn std::error::Error) -> String {
    let mut deepest = e;
    while let Some(s) = deepest.source() {
        deepest = s;
    }
    deepest.to_string()
}

/// The S3 error code in a server answer (`<Code>NoSuchBucket</Code>`), if any.
fn s3_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

/// An error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

/// A [`StoreError::Bucket`] naming the bucket and where it is.
pub(super) fn bucket_error(opts: &S3Options, reason: String) -> StoreError {
    StoreError::Bucket {
        bucket: opts.bucket.clone(),
        endpoint: where_is(opts),
        reason,
    }
}

/// The endpoint (without any user or password in it), or the AWS region.
pub(super) fn where_is(opts: &S3Options) -> String {
    match &opts.endpoint {
        Some(e) => match url::Url::parse(e) {
            Ok(mut u) => {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.as_str().trim_end_matches('/').to_owned()
            }
            Err(_) => "an invalid endpoint URL".to_owned(),
        },
        None => format!("AWS region {}", opts.region),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_s3_error_code_is_found_in_an_answer() {
        assert_eq!(
            s3_code("403: <Error><Code>SignatureDoesNotMatch</Code></Error>"),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(s3_code("connection refused"), None);
    }

    #[test]
    fn endpoints_are_shown_without_user_or_password() {
        let opts = S3Options {
            bucket: "b".into(),
            prefix: String::new(),
            region: "us-east-1".into(),
            endpoint: Some("http://user:pass@127.0.0.1:9000/".into()),
            credentials: None,
        };
        assert_eq!(where_is(&opts), "http://127.0.0.1:9000");
        let aws = S3Options {
            endpoint: None,
            ..opts
        };
        assert_eq!(where_is(&aws), "AWS region us-east-1");
    }
}

//! HTTP and JSON helpers shared by the cloud provider plugins (`gcp`, `acr`), included by
//! each crate with `#[path]`: a blocking client, token-endpoint responses read with a size
//! cap, and one-line error messages that never carry a secret. Owns no credential logic.

use std::io::Read as _;
use std::time::Duration;

use ociregistry_plugin_api::PluginError;

/// The most of a response body read: token responses are a few KiB.
const MAX_BODY: u64 = 256 * 1024;
/// The longest message a remote error contributes to our own error.
const MAX_REMOTE_MESSAGE: usize = 300;

/// A blocking HTTP client. `direct` clients ignore proxy settings (metadata servers are
/// link-local and must never be reached through a proxy).
pub(crate) fn client(direct: bool) -> Result<reqwest::blocking::Client, PluginError> {
    let mut b = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ociregistry-provider/", env!("CARGO_PKG_VERSION")));
    if direct {
        b = b.no_proxy();
    }
    b.build()
        .map_err(|e| PluginError::from_error("creating the HTTP client", &e))
}

/// Sends `req` and returns the JSON object of a 2xx answer. `what` names the call in errors
/// (e.g. `GCE metadata server token request`). Errors are one line: the transport error, or
/// the HTTP status with the remote's `error` / `error_description` / `message` fields (never
/// the body otherwise, which could echo something secret).
pub(crate) fn send_json(
    req: reqwest::blocking::RequestBuilder,
    what: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, PluginError> {
    let (status, body) = send(req, what)?;
    match serde_json::from_slice::<serde_json::Value>(&body).ok() {
        Some(serde_json::Value::Object(map)) => Ok(map),
        Some(_) => Err(PluginError::new(format!(
            "{what}: HTTP {status}: the answer is JSON but not an object"
        ))),
        None => Err(PluginError::new(format!(
            "{what}: HTTP {status}: the answer is not JSON ({} bytes)",
            body.len()
        ))),
    }
}

/// Sends `req` and returns the body of a 2xx answer (errors as [`send_json`]'s).
#[allow(dead_code)] // used by gcp only
pub(crate) fn send_text(
    req: reqwest::blocking::RequestBuilder,
    what: &str,
) -> Result<String, PluginError> {
    let (status, body) = send(req, what)?;
    String::from_utf8(body)
        .map_err(|_| PluginError::new(format!("{what}: HTTP {status}: the answer is not UTF-8")))
}

/// Sends `req`; the status and body of a 2xx answer, else a one-line error.
fn send(req: reqwest::blocking::RequestBuilder, what: &str) -> Result<(u16, Vec<u8>), PluginError> {
    guard_request(&req, what)?;
    let resp = req
        .send()
        .map_err(|e| one_line(PluginError::from_error(what, &e)))?;
    let status = resp.status();
    let mut body = Vec::new();
    resp.take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| {
            one_line(PluginError::from_error(
                format!("{what}: reading the answer"),
                &e,
            ))
        })?;
    if body.len() as u64 > MAX_BODY {
        return Err(PluginError::new(format!(
            "{what}: HTTP {}: answer larger than {MAX_BODY} bytes",
            status.as_u16()
        )));
    }
    if !status.is_success() {
        let parsed = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let detail = parsed.as_ref().and_then(remote_error);
        let detail = match detail {
            Some(d) => format!(": {d}"),
            None if body.is_empty() => String::new(),
            None => format!(" ({} bytes, not a JSON error)", body.len()),
        };
        return Err(PluginError::new(sanitize(&format!(
            "{what}: HTTP {}{detail}",
            status.as_u16()
        ))));
    }
    Ok((status.as_u16(), body))
}

/// In unit tests, refuses every request that is not to a loopback address: the tests must
/// override every endpoint, and a missed override fails instead of reaching a cloud.
#[cfg(test)]
fn guard_request(req: &reqwest::blocking::RequestBuilder, what: &str) -> Result<(), PluginError> {
    let Some(r) = req.try_clone().and_then(|r| r.build().ok()) else {
        return Ok(());
    };
    let host = r.url().host_str().unwrap_or_default().to_owned();
    if host == "127.0.0.1" || host == "[::1]" || host == "localhost" {
        Ok(())
    } else {
        Err(PluginError::new(format!(
            "{what}: test build refuses to contact non-loopback host {host}"
        )))
    }
}

#[cfg(not(test))]
fn guard_request(_req: &reqwest::blocking::RequestBuilder, _what: &str) -> Result<(), PluginError> {
    Ok(())
}

/// The remote's own error description from an OAuth 2 (`error`, `error_description`),
/// Google API (`error: {code, message, status}`) or ACR (`errors: [{code, message}]`,
/// `message`) error body.
fn remote_error(v: &serde_json::Value) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    match v.get("error") {
        Some(serde_json::Value::String(s)) => parts.push(s.clone()),
        Some(serde_json::Value::Object(o)) => {
            for k in ["status", "code", "message"] {
                match o.get(k) {
                    Some(serde_json::Value::String(s)) => parts.push(s.clone()),
                    Some(serde_json::Value::Number(n)) if k != "code" => parts.push(n.to_string()),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    if let Some(s) = v.get("error_description").and_then(|d| d.as_str()) {
        parts.push(s.to_owned());
    }
    if let Some(errs) = v.get("errors").and_then(|e| e.as_array()) {
        for e in errs.iter().take(2) {
            for k in ["code", "message"] {
                if let Some(s) = e.get(k).and_then(|s| s.as_str()) {
                    parts.push(s.to_owned());
                }
            }
        }
    }
    if parts.is_empty() {
        if let Some(s) = v.get("message").and_then(|m| m.as_str()) {
            parts.push(s.to_owned());
        }
    }
    (!parts.is_empty()).then(|| parts.join(": "))
}

/// One line: control characters (newlines included) become spaces, runs of whitespace
/// collapse, and the text is capped.
pub(crate) fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_REMOTE_MESSAGE * 2));
    let mut last_space = false;
    for c in s.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        out.push(c);
    }
    let out = out.trim();
    let limit = MAX_REMOTE_MESSAGE * 2;
    if out.chars().count() > limit {
        format!("{}...", out.chars().take(limit).collect::<String>())
    } else {
        out.to_owned()
    }
}

fn one_line(e: PluginError) -> PluginError {
    PluginError::with_kind(e.kind(), sanitize(e.message()))
}

/// A string field of a JSON object; `Err` names the call and the missing field.
pub(crate) fn str_field<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    key: &str,
    what: &str,
) -> Result<&'a str, PluginError> {
    match obj.get(key) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim()),
        Some(serde_json::Value::String(_)) => Err(PluginError::new(format!(
            "{what}: field \"{key}\" is empty"
        ))),
        Some(_) => Err(PluginError::new(format!(
            "{what}: field \"{key}\" is not a string"
        ))),
        None => Err(PluginError::new(format!("{what}: no \"{key}\" field"))),
    }
}

/// A number of seconds given as a JSON number or a decimal string (Azure IMDS sends
/// strings); `None` when absent, `Err` when present and not a non-negative integer.
pub(crate) fn seconds_field(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    what: &str,
) -> Result<Option<u64>, PluginError> {
    let bad = || {
        PluginError::new(format!(
            "{what}: field \"{key}\" is not a number of seconds"
        ))
    };
    match obj.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n.as_u64().map(Some).ok_or_else(bad),
        Some(serde_json::Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

/// `application/x-www-form-urlencoded` body of `pairs`.
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Checks that `raw` is a URL that secrets may be sent to: `https`, or plain `http` to a
/// loopback address (local test servers and proxies). `what` names the option in errors.
pub(crate) fn secure_url(raw: &str, what: &str) -> Result<url::Url, PluginError> {
    let u = url::Url::parse(raw).map_err(|e| {
        PluginError::invalid_options(format!("{what}: invalid URL \"{}\": {e}", sanitize(raw)))
    })?;
    let loopback = match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match u.scheme() {
        "https" => Ok(u),
        "http" if loopback => Ok(u),
        "http" => Err(PluginError::invalid_options(format!(
            "{what}: \"{}\" must use https (plain http only to a loopback address)",
            sanitize(raw)
        ))),
        other => Err(PluginError::invalid_options(format!(
            "{what}: unsupported URL scheme \"{other}\""
        ))),
    }
}

/// Decodes a JWT's payload (the middle part, base64url) without verifying it: only to
/// read claims such as `exp` or `tid` of a token we were just handed.
#[allow(dead_code)] // used by acr, and by gcp's tests
pub(crate) fn jwt_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

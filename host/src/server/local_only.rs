//! Requests to a token-less loopback API (the admin API without `admin.token`) that a web
//! page open in a browser on the same machine could send are refused here: such an API trusts
//! loopback, and a browser is on loopback. A page cannot choose the `Host` header (a page
//! whose name was rebound to 127.0.0.1 sends its own name), and it can send
//! `Content-Type: application/json` across origins only after a CORS preflight that these
//! APIs never answer.

use http::{Method, StatusCode, header};

/// Why a request was refused: status, OCI-style error code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 403 (`Host`) or 415 (`Content-Type`).
    pub status: StatusCode,
    /// `DENIED` or `UNSUPPORTED`.
    pub code: &'static str,
    /// What is wrong, for the client.
    pub message: String,
}

/// Checks one request to `what` (e.g. "the admin API"): every request needs a loopback
/// `Host` (and URI authority, when it has one), every request but GET and HEAD needs
/// `Content-Type: application/json`.
pub fn check(
    method: &Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    what: &str,
) -> Result<(), Refusal> {
    let host = headers.get(header::HOST).map(|v| v.to_str().unwrap_or(""));
    let authority = uri.authority().map(http::uri::Authority::as_str);
    if host.is_none() && authority.is_none() {
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            code: "DENIED",
            message: format!(
                "{what} without a token needs a Host header naming a loopback address \
                 (127.0.0.1, [::1] or localhost)"
            ),
        });
    }
    if let Some(bad) = [host, authority]
        .into_iter()
        .flatten()
        .find(|h| !is_loopback_host(h))
    {
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            code: "DENIED",
            message: format!(
                "{what} without a token answers only requests addressed to a loopback \
                 host (127.0.0.1, [::1] or localhost), not {:?}",
                bad.chars().take(100).collect::<String>()
            ),
        });
    }
    let changes_state = !matches!(*method, Method::GET | Method::HEAD);
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if changes_state && !json {
        return Err(Refusal {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "UNSUPPORTED",
            message: format!(
                "{method} on {what} needs `Content-Type: application/json` \
                 ({what} without a token refuses what a web page could send)"
            ),
        });
    }
    Ok(())
}

/// `127.0.0.1[:port]` (any loopback address), `[::1][:port]`, `localhost[:port]`.
pub fn is_loopback_host(host: &str) -> bool {
    let port_ok = |p: &str| {
        p.is_empty()
            || p.strip_prefix(':')
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, after)) if port_ok(after) => {
                return ip
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok_and(|ip| std::net::IpAddr::V6(ip).to_canonical().is_loopback());
            }
            _ => return false,
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) if port_ok(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9090",
            "127.1.2.3:1",
            "localhost",
            "LOCALHOST:8089",
            "[::1]",
            "[::1]:8089",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:8089",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:80",
            "[::2]:80",
            "::1",
            "127.0.0.1:",
            "127.0.0.1:80x",
            "[::1]x",
            "127.0.0.1:80:80",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}

//! Parsing `WWW-Authenticate` challenges (RFC 7235 auth-params) from upstream registries.

/// What an upstream asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP Basic (ECR, htpasswd registries).
    Basic,
    /// The registry token flow: get a token from `realm` for `service` and `scope`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter, if given.
        service: Option<String>,
        /// `scope` parameter, if given.
        scope: Option<String>,
    },
}

/// The longest header value looked at; longer ones are refused as garbage.
const MAX_LEN: usize = 4096;

/// Parses one `WWW-Authenticate` value. Unknown schemes and malformed values give `None`.
pub fn parse(value: &str) -> Option<Challenge> {
    if value.len() > MAX_LEN {
        return None;
    }
    let value = value.trim();
    let (scheme, rest) = match value.find(char::is_whitespace) {
        Some(i) => (&value[..i], value[i..].trim_start()),
        None => (value, ""),
    };
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest)?;
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let realm = get("realm")?;
    if !(realm.starts_with("https://") || realm.starts_with("http://")) {
        return None;
    }
    Some(Challenge::Bearer {
        realm,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `k=v, k="quoted, \"v\""` pairs.
fn parse_params(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return None;
        }
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn docker_hub() {
        let c = parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
    }

    #[test]
    fn variants() {
        assert_eq!(
            parse(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse("basic"), Some(Challenge::Basic));
        let c = parse(r#"bearer  realm=http://127.0.0.1:9/t , scope="a,b""#).unwrap();
        assert!(matches!(c, Challenge::Bearer { scope: Some(s), .. } if s == "a,b"));
        assert_eq!(parse("Bearer service=x"), None);
        assert_eq!(parse(r#"Bearer realm="file:///etc/passwd""#), None);
        assert_eq!(parse(r#"Bearer realm="https://x"#), None);
        assert_eq!(parse("Negotiate abc"), None);
        assert_eq!(
            parse(&format!("Bearer realm=\"https://{}\"", "a".repeat(5000))),
            None
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
        #[test]
        fn never_panics(s in r#"(Bearer|Basic|bearer)? ?[a-z=", \\]{0,60}"#) { let _ = parse(&s); }
    }
}

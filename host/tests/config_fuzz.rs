//! Issue 5: config parsing never panics, whatever the text (bounded proptest cases).

use proptest::prelude::*;

/// Fragments that look like our config, to reach deeper than random bytes do.
fn yamlish() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "imagePath",
        "port",
        "host",
        "defaultNs",
        "airGapped",
        "alwaysPullLatest",
        "helloWorld",
        "pullTimeout",
        "tagTtl",
        "revalidateTimeout",
        "maxManifestSize",
        "maxConnections",
        "registries",
        "name",
        "scheme",
        "auth",
        "user",
        "password",
        "passwordFromEnv",
        "token",
        "provider",
        "providerOpts",
        "expiry",
        "timeout",
        "static",
        "tls",
        "ca",
        "cert",
        "key",
        "insecureSkipVerify",
        "logLevel",
        "pruneConfig",
        "storage",
        "s3",
        "bucket",
        "prefix",
        "region",
        "endpoint",
        "accessKeyIdFromEnv",
        "secretAccessKeyFromEnv",
        "sessionTokenFromEnv",
        "localCache",
        "path",
        "maxSize",
        "redirect",
        "x",
    ]);
    let value = prop::sample::select(vec![
        "",
        "1",
        "-1",
        "0",
        "99999999999999999999999",
        "1s",
        "1h30m",
        "5x",
        "1e9",
        "true",
        "no",
        "~",
        "null",
        "[]",
        "{}",
        "[1, [2, {a: b}]]",
        "\"s\"",
        "'q'",
        "&a",
        "*a",
        "!!str",
        "|",
        ">",
        "\"\\u0000\"",
        "1024",
        "67108865",
        "http",
        "https",
        "ftp",
        "http://127.0.0.1:9000",
        "http://u:p@h/x?y",
        "/../a//",
        "{user: u}",
        "- a\n- b",
    ]);
    let line = (0usize..6, key, value, prop::bool::ANY).prop_map(|(indent, k, v, dash)| {
        format!(
            "{}{}{k}: {v}",
            " ".repeat(indent),
            if dash { "- " } else { "" }
        )
    });
    prop::collection::vec(line, 0..16).prop_map(|ls| ls.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parse_text_never_panics_on_yamlish_text(text in yamlish()) {
        let _ = ociregistry::config::parse_text(&text);
    }

    #[test]
    fn parse_text_never_panics_on_any_text(text in "\\PC{0,400}") {
        let _ = ociregistry::config::parse_text(&text);
    }
}

//! Ociregistry's `providerOpts`: a comma-separated `key=value` list, checked against the
//! options a provider declares.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::PluginError;

/// One option a provider accepts, declared in [`crate::ProviderFactory::OPTIONS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionSpec {
    /// The key as written in `providerOpts` (case-sensitive).
    pub key: &'static str,
    /// One line for `ociregistry providers`.
    pub description: &'static str,
    /// Whether `providerOpts` must set it.
    pub required: bool,
}

/// Parsed and validated `providerOpts`.
///
/// Syntax: `key=value` pairs separated by commas, e.g. `profile=default,region=us-east-1`.
/// Whitespace around keys and values is ignored; values keep their case and may contain
/// `=` (only the first one separates key and value) but not `,`. Empty items (`a=1,,b=2`,
/// a trailing comma, an empty string) are ignored. A key given twice, a key that the
/// provider does not accept, an item without `=` and a missing required key are errors
/// of kind [`crate::PluginErrorKind::InvalidOptions`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderOpts {
    values: BTreeMap<String, String>,
}

impl ProviderOpts {
    /// Parses `raw` and checks it against `options` of the provider called `provider`
    /// (the name is used in error messages only).
    pub fn parse(provider: &str, raw: &str, options: &[OptionSpec]) -> Result<Self, PluginError> {
        Self::parse_with(provider, raw, options.iter().map(|o| (o.key, o.required)))
    }

    /// Like [`ProviderOpts::parse`], with the accepted options as `(key, required)` pairs.
    pub fn parse_with<'k>(
        provider: &str,
        raw: &str,
        options: impl IntoIterator<Item = (&'k str, bool)> + Clone,
    ) -> Result<Self, PluginError> {
        let accepted = || {
            let keys: Vec<&str> = options.clone().into_iter().map(|(k, _)| k).collect();
            if keys.is_empty() {
                "it accepts no options".to_owned()
            } else {
                format!("accepted: {}", keys.join(", "))
            }
        };
        let mut values = BTreeMap::new();
        for item in raw.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let Some((key, value)) = item.split_once('=') else {
                return Err(PluginError::invalid_options(format!(
                    "providerOpts for provider \"{provider}\": item \"{}\" is not key=value",
                    item_name(item)
                )));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(PluginError::invalid_options(format!(
                    "providerOpts for provider \"{provider}\": an item has an empty key"
                )));
            }
            if !options.clone().into_iter().any(|(k, _)| k == key) {
                return Err(PluginError::invalid_options(format!(
                    "providerOpts for provider \"{provider}\": unknown option \"{key}\"; {}",
                    accepted()
                )));
            }
            if values.insert(key.to_owned(), value.to_owned()).is_some() {
                return Err(PluginError::invalid_options(format!(
                    "providerOpts for provider \"{provider}\": option \"{key}\" given more than once"
                )));
            }
        }
        for (key, required) in options.clone() {
            if required && !values.contains_key(key) {
                return Err(PluginError::invalid_options(format!(
                    "providerOpts for provider \"{provider}\": missing required option \"{key}\""
                )));
            }
        }
        Ok(ProviderOpts { values })
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value of a required `key`. Validation has already checked that required keys are
    /// present, so this fails only when `key` is not declared required.
    pub fn required(&self, key: &str) -> Result<&str, PluginError> {
        self.get(key).ok_or_else(|| {
            PluginError::invalid_options(format!("missing required option \"{key}\""))
        })
    }

    /// The value of `key` parsed as a `T`, if given; a value that does not parse is an
    /// [`crate::PluginErrorKind::InvalidOptions`] error naming the key and the value.
    pub fn parsed<T>(&self, key: &str) -> Result<Option<T>, PluginError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e| {
                PluginError::invalid_options(format!(
                    "option \"{key}\": invalid value \"{v}\": {e}"
                ))
            }),
        }
    }

    /// All given options, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether no option was given.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// An item without `=` might be a pasted secret: show at most its first few characters.
fn item_name(item: &str) -> String {
    const MAX: usize = 24;
    if item.chars().count() <= MAX {
        item.to_owned()
    } else {
        format!("{}...", item.chars().take(MAX).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PluginErrorKind;

    const OPTS: &[OptionSpec] = &[
        OptionSpec {
            key: "path",
            description: "file",
            required: true,
        },
        OptionSpec {
            key: "scheme",
            description: "basic|bearer",
            required: false,
        },
    ];

    fn err(raw: &str) -> String {
        let e = ProviderOpts::parse("file", raw, OPTS).unwrap_err();
        assert_eq!(e.kind(), PluginErrorKind::InvalidOptions);
        e.to_string()
    }

    #[test]
    fn parses_and_preserves_case() {
        let o = ProviderOpts::parse("file", " path = /Run/Secret=X ,scheme=Bearer,", OPTS).unwrap();
        assert_eq!(o.get("path"), Some("/Run/Secret=X"));
        assert_eq!(o.get("scheme"), Some("Bearer"));
        assert_eq!(o.required("path").unwrap(), "/Run/Secret=X");
        assert_eq!(o.iter().count(), 2);
    }

    #[test]
    fn empty_string_is_no_options() {
        let o = ProviderOpts::parse("x", "", &[]).unwrap();
        assert!(o.is_empty());
        let o = ProviderOpts::parse("x", " , ", &[]).unwrap();
        assert!(o.is_empty());
    }

    #[test]
    fn unknown_key_lists_accepted_keys() {
        assert_eq!(
            err("path=/x,region=us-east-1"),
            "providerOpts for provider \"file\": unknown option \"region\"; accepted: path, scheme"
        );
        let e = ProviderOpts::parse("ecr", "foo=bar", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "providerOpts for provider \"ecr\": unknown option \"foo\"; it accepts no options"
        );
    }

    #[test]
    fn keys_are_case_sensitive() {
        assert!(err("Path=/x").contains("unknown option \"Path\""));
    }

    #[test]
    fn missing_required_key() {
        assert_eq!(
            err("scheme=basic"),
            "providerOpts for provider \"file\": missing required option \"path\""
        );
        assert!(err("").contains("missing required option \"path\""));
    }

    #[test]
    fn malformed_items() {
        assert_eq!(
            err("path=/x,scheme"),
            "providerOpts for provider \"file\": item \"scheme\" is not key=value"
        );
        assert!(err("=x,path=/a").contains("empty key"));
        assert!(err("path=/a,path=/b").contains("\"path\" given more than once"));
        // A long item without '=' (maybe a pasted token) is cut short in the message.
        let long = "a".repeat(100);
        let msg = err(&format!("path=/x,{long}"));
        assert!(!msg.contains(&long), "{msg}");
    }

    #[test]
    fn parsed_values() {
        const N: &[OptionSpec] = &[OptionSpec {
            key: "n",
            description: "",
            required: false,
        }];
        let o = ProviderOpts::parse("t", "n=3", N).unwrap();
        assert_eq!(o.parsed::<u32>("n").unwrap(), Some(3));
        let o = ProviderOpts::parse("t", "n=x", N).unwrap();
        let e = o.parsed::<u32>("n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("option \"n\": invalid value \"x\""),
            "{e}"
        );
        assert_eq!(ProviderOpts::default().parsed::<u32>("n").unwrap(), None);
    }
}

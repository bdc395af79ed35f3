//! Where things are written in the config text, from the YAML parser's own marks: the line of
//! a key path (for rules checked after parsing) and the line and key of a parse error. Not
//! the rules themselves.
//!
//! serde_yaml_ng gives no spans, but every error it raises inside a `deserialize_*` call
//! carries the mark of the node being read. [`line_of`] walks the document with a seed that
//! fails on purpose at the node wanted and reads the mark off that error.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::error::ParseError;

/// One step of a key path: a map key or a list index (`registries[1].name` is
/// `[Key("registries"), Index(1), Key("name")]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// A map key.
    Key(&'a str),
    /// A list index.
    Index(usize),
}

/// The 1-based line of the node at `path` as the YAML parser marks it: for a key, the key
/// itself; for a list item, where the item starts. `None` when the text holds no such node.
pub(crate) fn line_of(text: &str, path: &[Step<'_>]) -> Option<usize> {
    if path.is_empty() {
        return None;
    }
    let found = Cell::new(false);
    let seed = Find {
        path,
        found: &found,
    };
    match seed.deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
        Err(e) if found.get() => e.location().map(|l| l.line()),
        _ => None,
    }
}

/// The line of the first of `paths` that is written.
pub(crate) fn first_line_of(text: &str, paths: &[&[Step<'_>]]) -> Option<usize> {
    paths.iter().find_map(|p| line_of(text, p))
}

/// A parse error with the parser's line, and the key written at (or before) the parser's
/// column on that line.
pub(crate) fn parse_error(text: &str, e: &serde_yaml_ng::Error) -> ParseError {
    let message = e.to_string();
    let Some(loc) = e.location() else {
        return ParseError::new(None, None, message);
    };
    // serde_yaml_ng appends the mark it printed; drop exactly that suffix (the line is given
    // separately), nothing else.
    let suffix = format!(" at line {} column {}", loc.line(), loc.column());
    let message = message
        .strip_suffix(&suffix)
        .map(str::to_owned)
        .unwrap_or(message);
    let key = text
        .lines()
        .nth(loc.line().saturating_sub(1))
        .and_then(|l| key_at(l, loc.column().saturating_sub(1)));
    ParseError::new(Some(loc.line()), key, message)
}

/// The key of the node the parser marked at byte column `col` of `line`: the node itself when
/// it is a key (`usr: x` with the mark on `usr`), else the key written before it on the line
/// (`expiry: 6x` with the mark on `6x`; `{host: a, private: true}`). `None` for a list item.
fn key_at(line: &str, col: usize) -> Option<String> {
    let col = (0..=col.min(line.len()))
        .rev()
        .find(|c| line.is_char_boundary(*c))?;
    let (before, at) = line.split_at(col);
    let clean = |k: &str| {
        let k = k.trim().trim_matches(|c| c == '"' || c == '\'');
        (!k.is_empty() && !k.contains([' ', '{', '[', ',', '#'])).then(|| k.to_owned())
    };
    // The marked node is a key when a `:` (then a space or the end) follows its name.
    if let Some(end) = at.find(':') {
        let rest = &at[end + 1..];
        if rest.is_empty() || rest.starts_with([' ', '\t']) {
            if let Some(k) = clean(&at[..end]) {
                return Some(k);
            }
        }
    }
    // A value: the last `key:` before it (`deny: ["a b"]`, `{host: a, port: x}`).
    let colon = before
        .char_indices()
        .rev()
        .find(|(i, c)| {
            *c == ':'
                && before[i + 1..]
                    .chars()
                    .next()
                    .is_none_or(char::is_whitespace)
        })
        .map(|(i, _)| i)?;
    let name = &before[..colon];
    let start = name
        .rfind(['{', '[', ',', ' ', '\t'])
        .map(|i| i + 1)
        .unwrap_or(0);
    clean(&name[start..])
}

/// Walks towards `path`; fails (and sets `found`) at the node wanted.
struct Find<'p, 'a> {
    path: &'p [Step<'a>],
    found: &'p Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Find<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Succeeds on any scalar (the path goes no deeper than a scalar).
macro_rules! pass_scalars {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<(), E> { Ok(()) })*
    };
}

impl<'de> Visitor<'de> for Find<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }
    pass_scalars!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128,
        visit_u128: u128, visit_f64: f64, visit_str: &str);
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Step::Key(want), rest)) = self.path.split_first() else {
            return Ok(());
        };
        let probe = || KeyProbe {
            want,
            fail: rest.is_empty(),
            found: self.found,
        };
        while let Some(hit) = map.next_key_seed(probe())? {
            if hit {
                map.next_value_seed(Find {
                    path: rest,
                    found: self.found,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Step::Index(want), rest)) = self.path.split_first() else {
            return Ok(());
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        if rest.is_empty() {
            seq.next_element_seed(Fail(self.found))?;
        } else {
            seq.next_element_seed(Find {
                path: rest,
                found: self.found,
            })?;
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// Reads a map key: `true` when it is the one wanted; fails there when it ends the path.
struct KeyProbe<'p> {
    want: &'p str,
    fail: bool,
    found: &'p Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for KeyProbe<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyProbe<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map key")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<bool, E> {
        if s != self.want {
            return Ok(false);
        }
        if self.fail {
            self.found.set(true);
            return Err(E::custom("found"));
        }
        Ok(true)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// Fails at whatever node it is given, so that the error carries that node's mark.
struct Fail<'p>(&'p Cell<bool>);

impl<'de> DeserializeSeed<'de> for Fail<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.set(true);
        d.deserialize_ignored_any(self)
    }
}

impl<'de> Visitor<'de> for Fail<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nothing")
    }
}

#[cfg(test)]
mod tests {
    use super::Step::{Index, Key};
    use super::*;

    #[test]
    fn lines_of_key_paths() {
        let text = "port: 1\nregistries:\n- name: a.io\n  auth:\n    user: u\n- name: b.io\n  tls: {ca: /x}\nserverTlsConfig: {cert: /c, key: /k}\n";
        assert_eq!(line_of(text, &[Key("port")]), Some(1));
        assert_eq!(line_of(text, &[Key("registries")]), Some(2));
        assert_eq!(line_of(text, &[Key("registries"), Index(0)]), Some(3));
        assert_eq!(
            line_of(
                text,
                &[Key("registries"), Index(0), Key("auth"), Key("user")]
            ),
            Some(5)
        );
        assert_eq!(
            line_of(text, &[Key("registries"), Index(1), Key("name")]),
            Some(6)
        );
        assert_eq!(
            line_of(text, &[Key("registries"), Index(1), Key("tls"), Key("ca")]),
            Some(7)
        );
        assert_eq!(
            line_of(text, &[Key("serverTlsConfig"), Key("key")]),
            Some(8)
        );
        assert_eq!(line_of(text, &[Key("registries"), Index(2)]), None);
        assert_eq!(line_of(text, &[Key("nope")]), None);
        // Keys before a syntax error are found; those after it are not.
        assert_eq!(line_of("a: [", &[Key("a")]), Some(1));
        assert_eq!(line_of("a: [\nb: 1\n", &[Key("b")]), None);
        assert_eq!(line_of("", &[Key("a")]), None);
    }

    #[test]
    fn keys_at_marks() {
        assert_eq!(key_at("    usr: x", 4).as_deref(), Some("usr"));
        assert_eq!(key_at("      expiry: 6x", 14).as_deref(), Some("expiry"));
        assert_eq!(
            key_at("  - {host: a, private: true}", 14).as_deref(),
            Some("private")
        );
        assert_eq!(key_at("logFile: [a, b]", 9).as_deref(), Some("logFile"));
        assert_eq!(key_at("  deny: [\"a b\"]", 9).as_deref(), Some("deny"));
        assert_eq!(key_at("- \"a b\"", 2), None);
        assert_eq!(key_at("url: http://x", 5).as_deref(), Some("url"));
    }
}

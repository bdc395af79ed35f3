//! Platforms (`os/arch[/variant]`): parsing `--platform` and the config's `os`/`arch`, this
//! machine's default, and matching the `platform` of an index entry.

use std::fmt;
use std::str::FromStr;

pub use crate::oci::manifest::EntryPlatform;

/// Why a platform (or one part of it) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// A part is empty, too long, or has characters other than letters, digits, `.`, `_`, `-`.
    #[error("{0:?} is not a platform part (letters, digits, '.', '_', '-')")]
    Part(String),
    /// Not `os/arch` or `os/arch/variant`.
    #[error("{0:?}: a platform is os/arch or os/arch/variant, e.g. linux/amd64 or linux/arm/v7")]
    Shape(String),
}

/// A platform chosen from a multi-platform image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// OCI architecture name: `amd64`, `arm64`, `arm`, `s390x`, ...
    pub arch: String,
    /// `v7`, `v8`, ...; `None` accepts any variant.
    pub variant: Option<String>,
}

/// The OCI name of a Rust `target_arch`.
pub fn oci_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        "mips" if cfg!(target_endian = "little") => "mipsle",
        other => other,
    }
}

impl Platform {
    /// This machine's platform: `linux` and its architecture under its OCI name.
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            arch: oci_arch(std::env::consts::ARCH).to_owned(),
            variant: None,
        }
    }

    /// The platform the config's `os` and `arch` keys name (either may be left out: `linux`
    /// and this machine's architecture fill in); `None` when neither is set. The error
    /// names the key.
    pub fn from_config(
        os: Option<&str>,
        arch: Option<&str>,
    ) -> Result<Option<Platform>, (&'static str, String)> {
        if os.is_none() && arch.is_none() {
            return Ok(None);
        }
        let host = Platform::host();
        let os = match os {
            Some(o) => part(o).map_err(|e| ("os", e.to_string()))?,
            None => host.os,
        };
        let (arch, variant) = match arch {
            Some(a) => {
                let (a, v) = match a.split_once('/') {
                    Some((a, v)) => (a, Some(part(v).map_err(|e| ("arch", e.to_string()))?)),
                    None => (a, None),
                };
                (part(a).map_err(|e| ("arch", e.to_string()))?, v)
            }
            None => (host.arch, None),
        };
        Ok(Some(Platform { os, arch, variant }))
    }

    /// Whether an index entry is for this platform. An unset variant here accepts any;
    /// `arm64` entries without a variant are `v8`.
    pub fn matches(&self, entry: &EntryPlatform) -> bool {
        if self.os != entry.os.to_ascii_lowercase() || self.arch != entry.arch.to_ascii_lowercase()
        {
            return false;
        }
        match (&self.variant, &entry.variant) {
            (None, _) => true,
            (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
            (Some(want), None) => self.arch == "arm64" && want == "v8",
        }
    }
}

/// One `/`-separated part: lowercase letters, digits, `.`, `_` and `-`.
fn part(s: &str) -> Result<String, PlatformError> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(PlatformError::Part(s.to_owned()))
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// `os/arch` or `os/arch/variant`, e.g. `linux/arm64` or `linux/arm/v7`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            _ => {
                return Err(PlatformError::Shape(s.to_owned()));
            }
        };
        Ok(Platform {
            os: part(os)?,
            arch: part(arch)?,
            variant: variant.map(part).transpose()?,
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str, variant: Option<&str>) -> EntryPlatform {
        EntryPlatform {
            os: os.into(),
            arch: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn parse_and_display() {
        let p: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm/v7");
        let p: Platform = "Linux/AMD64".parse().unwrap();
        assert_eq!(p.to_string(), "linux/amd64");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_arch_names() {
        assert_eq!(oci_arch("x86_64"), "amd64");
        assert_eq!(oci_arch("aarch64"), "arm64");
        assert_eq!(oci_arch("s390x"), "s390x");
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        assert!(!h.arch.contains('_'), "{}", h.arch);
    }

    #[test]
    fn matching() {
        let amd: Platform = "linux/amd64".parse().unwrap();
        assert!(amd.matches(&entry("linux", "amd64", None)));
        assert!(!amd.matches(&entry("linux", "arm64", None)));
        assert!(!amd.matches(&entry("windows", "amd64", None)));
        assert!(!amd.matches(&entry("unknown", "unknown", None)));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(v7.matches(&entry("linux", "arm", Some("v7"))));
        assert!(!v7.matches(&entry("linux", "arm", Some("v6"))));
        let arm: Platform = "linux/arm".parse().unwrap();
        assert!(arm.matches(&entry("linux", "arm", Some("v6"))));
        let v8: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(v8.matches(&entry("linux", "arm64", None)));
    }

    #[test]
    fn config_keys() {
        assert_eq!(Platform::from_config(None, None), Ok(None));
        let p = Platform::from_config(None, Some("arm64")).unwrap().unwrap();
        assert_eq!(p.to_string(), "linux/arm64");
        let p = Platform::from_config(Some("linux"), Some("arm/v7"))
            .unwrap()
            .unwrap();
        assert_eq!(p.to_string(), "linux/arm/v7");
        let p = Platform::from_config(Some("windows"), None)
            .unwrap()
            .unwrap();
        assert_eq!(p.os, "windows");
        assert_eq!(
            Platform::from_config(None, Some("a b")).unwrap_err().0,
            "arch"
        );
        assert_eq!(Platform::from_config(Some(""), None).unwrap_err().0, "os");
    }
}

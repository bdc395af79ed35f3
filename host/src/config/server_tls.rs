//! TLS on the pull port as configured (`serverTlsConfig`): the PEM files read into plain DER
//! values and checked, with the lines their keys are written on. Building the rustls
//! acceptor from them is `server::tls`'s job, not this module's.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::Source;
use super::position::{Step::Key, first_line_of};
use super::{ClientAuth, ConfigError, ServerTlsFileConfig};

/// A key of `serverTlsConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsKey {
    /// `cert`.
    Cert,
    /// `key`.
    Key,
    /// `ca`.
    Ca,
    /// `clientAuth`.
    ClientAuth,
}

impl TlsKey {
    /// As written in the file.
    pub fn name(self) -> &'static str {
        match self {
            TlsKey::Cert => "cert",
            TlsKey::Key => "key",
            TlsKey::Ca => "ca",
            TlsKey::ClientAuth => "clientAuth",
        }
    }
}

/// The server's private key (DER); never printed.
pub struct PrivateKey(pub PrivateKeyDer<'static>);

impl Clone for PrivateKey {
    fn clone(&self) -> Self {
        PrivateKey(self.0.clone_key())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where `serverTlsConfig` is written: the file and the line of each key, for problems found
/// when the acceptor is built.
#[derive(Debug, Clone, Default)]
pub struct TlsOrigin {
    /// The config file.
    pub file: PathBuf,
    /// Lines of `cert`, `key`, `ca` and `clientAuth` (or of `serverTlsConfig` itself).
    pub lines: [Option<usize>; 4],
}

/// TLS on the pull port, after validation: the files' contents, read and checked once.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Certificate chain file.
    pub cert: PathBuf,
    /// Key file.
    pub key: PathBuf,
    /// Client CA file.
    pub ca: Option<PathBuf>,
    /// Whether client certificates are required.
    pub client_auth: ClientAuth,
    /// The certificate chain read from `cert`, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The private key read from `key`.
    pub private_key: PrivateKey,
    /// The CAs read from `ca` (with `clientAuth: verify`; else empty).
    pub client_cas: Vec<CertificateDer<'static>>,
    /// Where it is written.
    pub origin: TlsOrigin,
}

impl ServerTls {
    /// Reads and checks the files `serverTlsConfig` names, so that a bad one stops the start
    /// with its key and line named.
    pub(crate) fn read(t: &ServerTlsFileConfig, src: Source<'_>) -> Result<ServerTls, ConfigError> {
        let line = |k: TlsKey| {
            first_line_of(
                src.text,
                &[
                    &[Key("serverTlsConfig"), Key(k.name())],
                    &[Key("serverTlsConfig")],
                ],
            )
        };
        let origin = TlsOrigin {
            file: src.path.to_owned(),
            lines: [TlsKey::Cert, TlsKey::Key, TlsKey::Ca, TlsKey::ClientAuth].map(line),
        };
        let error = |key: TlsKey, message: String| invalid(&origin, key, message);
        let pem = |key: TlsKey| {
            let origin = &origin;
            move |e: PemError| invalid(origin, key, e.to_string())
        };
        if t.client_auth == ClientAuth::Verify && t.ca.is_none() {
            return Err(error(
                TlsKey::ClientAuth,
                "verify needs serverTlsConfig.ca, the CAs client certificates must chain to".into(),
            ));
        }
        let cert_chain = read_certs(&t.cert.0).map_err(pem(TlsKey::Cert))?;
        let private_key = read_key(&t.key.0).map_err(pem(TlsKey::Key))?;
        let client_cas = match (t.client_auth, &t.ca) {
            (ClientAuth::Verify, Some(ca)) => read_certs(&ca.0).map_err(pem(TlsKey::Ca))?,
            _ => Vec::new(),
        };
        Ok(ServerTls {
            cert: t.cert.0.clone(),
            key: t.key.0.clone(),
            ca: t.ca.as_ref().map(|f| f.0.clone()),
            client_auth: t.client_auth,
            cert_chain,
            private_key: PrivateKey(private_key),
            client_cas,
            origin,
        })
    }

    /// The file behind `key`.
    pub fn path_of(&self, key: TlsKey) -> Option<&Path> {
        match key {
            TlsKey::Cert => Some(&self.cert),
            TlsKey::Key => Some(&self.key),
            TlsKey::Ca => self.ca.as_deref(),
            TlsKey::ClientAuth => None,
        }
    }

    /// A problem with the file behind `key` found later (when the acceptor is built), as a
    /// config error naming the key, its line and the file.
    pub fn invalid(&self, key: TlsKey, message: impl fmt::Display) -> ConfigError {
        let message = match self.path_of(key) {
            Some(path) => format!("{}: {message}", path.display()),
            None => message.to_string(),
        };
        invalid(&self.origin, key, message)
    }
}

fn invalid(origin: &TlsOrigin, key: TlsKey, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: origin.file.clone(),
        key: format!("serverTlsConfig.{}", key.name()),
        line: origin.lines[key as usize],
        message,
    }
}

/// A PEM file that cannot be used; the message leads with the file.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// Unreadable.
    #[error("{path}: cannot read: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Broken PEM where a certificate was wanted.
    #[error("{path}: not a PEM certificate file: {error}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        error: rustls_pki_types::pem::Error,
    },
    /// No certificate in it.
    #[error("{path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// No private key in it.
    #[error("{path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// Broken PEM where a key was wanted.
    #[error("{path}: not a PEM private key: {error}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        error: rustls_pki_types::pem::Error,
    },
}

fn read_pem(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|error| PemError::Read {
        path: path.to_owned(),
        error,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| PemError::BadCertificate {
            path: path.to_owned(),
            error,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::NoKey {
            path: path.to_owned(),
        },
        error => PemError::BadKey {
            path: path.to_owned(),
            error,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReadableFile;

    fn tls(dir: &Path, cert: &str, key: &str) -> ServerTlsFileConfig {
        let c = dir.join("c.pem");
        let k = dir.join("k.pem");
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        ServerTlsFileConfig {
            cert: ReadableFile(c),
            key: ReadableFile(k),
            ca: None,
            client_auth: ClientAuth::None,
        }
    }

    /// The key at fault and the error's text.
    fn read(t: &ServerTlsFileConfig) -> (String, String) {
        let src = Source {
            path: Path::new("c.yaml"),
            text: "",
        };
        match ServerTls::read(t, src).err().unwrap() {
            e @ ConfigError::Invalid { .. } => {
                let ConfigError::Invalid { key, .. } = &e else {
                    unreachable!()
                };
                (key.clone(), e.to_string())
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn a_file_without_pem_names_key_and_file() {
        let d = tempfile::tempdir().unwrap();
        let (key, m) = read(&tls(d.path(), "hello\n", ""));
        assert_eq!(key, "serverTlsConfig.cert");
        assert!(
            m.contains("serverTlsConfig.cert: ") && m.contains("c.pem"),
            "{m}"
        );
        assert!(m.contains("no PEM certificate"), "{m}");
    }

    #[test]
    fn an_unreadable_file_names_key_and_file() {
        let d = tempfile::tempdir().unwrap();
        let mut t = tls(d.path(), "", "");
        t.cert = ReadableFile(d.path().join("gone.pem"));
        let (key, m) = read(&t);
        assert_eq!(key, "serverTlsConfig.cert");
        assert!(m.contains("gone.pem") && m.contains("cannot read"), "{m}");
    }

    #[test]
    fn verify_without_ca_is_refused_first() {
        let d = tempfile::tempdir().unwrap();
        let mut t = tls(d.path(), "", "");
        t.client_auth = ClientAuth::Verify;
        let (key, m) = read(&t);
        assert_eq!(key, "serverTlsConfig.clientAuth", "{m}");
    }

    #[test]
    fn the_private_key_never_prints() {
        let k = PrivateKey(PrivateKeyDer::Pkcs8(vec![1, 2, 3].into()));
        assert_eq!(format!("{k:?}"), "<redacted>");
    }
}

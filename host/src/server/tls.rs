//! TLS on the pull port (`serverTlsConfig`): loads the server certificate chain and key
//! (PEM), optionally the CAs that client certificates must chain to (`clientAuth: verify`),
//! and builds the acceptor that [`super::listener`] runs every accepted connection through
//! (the pull port, and the admin API when the pull port speaks TLS); the handshake counts
//! against the listener's header timeout.
//!
//! rustls with the aws-lc-rs provider (the one reqwest already uses for upstreams), TLS 1.2
//! and 1.3, ALPN `h2` and `http/1.1` (the listener then reads the HTTP/2 preface, or not). A file
//! that cannot be read or holds no usable PEM is a [`TlsSetupError`] naming the config key and
//! the file; a handshake that fails is one client's problem and never the server's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuth, ServerTls};

/// Why the TLS acceptor could not be built; `key` is the `serverTlsConfig` key at fault.
#[derive(Debug, thiserror::Error)]
#[error("serverTlsConfig.{key} {}: {message}", path.display())]
pub struct TlsSetupError {
    /// `cert`, `key` or `ca` (or `clientAuth` for the verifier).
    pub key: &'static str,
    /// The file involved.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

impl TlsSetupError {
    /// The message without the leading key, for errors that name the key already.
    pub fn detail(&self) -> String {
        if self.key == "clientAuth" {
            self.message.clone()
        } else {
            format!("{}: {}", self.path.display(), self.message)
        }
    }
}

/// An acceptor built from a [`ServerTls`] (its files were read and checked then).
#[derive(Clone)]
pub struct BuiltAcceptor(pub TlsAcceptor);

impl std::fmt::Debug for BuiltAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BuiltAcceptor")
    }
}

/// The acceptor for `cfg`: the one built when the config was read, else one built now.
pub fn acceptor_of(cfg: &ServerTls) -> Result<TlsAcceptor, TlsSetupError> {
    match &cfg.built {
        Some(a) => Ok(a.0.clone()),
        None => acceptor(cfg),
    }
}

/// Builds the acceptor for `cfg`. Every file is read and checked now, so that a bad
/// certificate stops the server at start rather than at the first client.
pub fn acceptor(cfg: &ServerTls) -> Result<TlsAcceptor, TlsSetupError> {
    if cfg.client_auth == ClientAuth::Verify && cfg.ca.is_none() {
        return Err(TlsSetupError {
            key: "clientAuth",
            path: PathBuf::from("(no ca)"),
            message: "verify needs serverTlsConfig.ca, the CAs client certificates must chain to"
                .into(),
        });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = read_certs("cert", &cfg.cert)?;
    let key = read_key(&cfg.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError {
            key: "cert",
            path: cfg.cert.clone(),
            message: format!("no usable TLS protocol version: {e}"),
        })?;
    let builder = match (cfg.client_auth, &cfg.ca) {
        (ClientAuth::Verify, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("ca", ca)? {
                roots.add(c).map_err(|e| TlsSetupError {
                    key: "ca",
                    path: ca.clone(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsSetupError {
                    key: "ca",
                    path: ca.clone(),
                    message: format!("cannot verify client certificates with it: {e}"),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsSetupError {
            key: "key",
            path: cfg.key.clone(),
            message: format!(
                "does not go with the certificate in {}: {e}",
                cfg.cert.display()
            ),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|e| TlsSetupError {
        key,
        path: path.to_owned(),
        message: format!("cannot read: {e}"),
    })
}

fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read_pem(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError {
            key,
            path: path.to_owned(),
            message: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError {
            key,
            path: path.to_owned(),
            message: "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = read_pem("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsSetupError {
        key: "key",
        path: path.to_owned(),
        message: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".into()
            }
            e => format!("not a PEM private key: {e}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(dir: &Path, cert: &str, key: &str) -> ServerTls {
        let c = dir.join("c.pem");
        let k = dir.join("k.pem");
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        ServerTls {
            cert: c,
            key: k,
            ca: None,
            client_auth: ClientAuth::None,
            built: None,
        }
    }

    #[test]
    fn a_file_without_pem_names_key_and_file() {
        let d = tempfile::tempdir().unwrap();
        let e = acceptor(&tls(d.path(), "hello\n", "")).err().unwrap();
        assert_eq!(e.key, "cert");
        let m = e.to_string();
        assert!(
            m.starts_with("serverTlsConfig.cert ") && m.contains("c.pem"),
            "{m}"
        );
        assert!(m.contains("no PEM certificate"), "{m}");
    }

    #[test]
    fn an_unreadable_file_names_key_and_file() {
        let d = tempfile::tempdir().unwrap();
        let mut t = tls(d.path(), "", "");
        t.cert = d.path().join("gone.pem");
        let e = acceptor(&t).err().unwrap();
        assert_eq!(e.key, "cert");
        assert!(e.to_string().contains("gone.pem") && e.to_string().contains("cannot read"));
    }

    #[test]
    fn verify_without_ca_is_refused_first() {
        let d = tempfile::tempdir().unwrap();
        let mut t = tls(d.path(), "", "");
        t.client_auth = ClientAuth::Verify;
        let e = acceptor(&t).err().unwrap();
        assert_eq!(e.key, "clientAuth", "{e}");
    }
}

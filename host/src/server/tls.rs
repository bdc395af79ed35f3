//! TLS on the pull port (`serverTlsConfig`): builds, from the certificate chain, key and
//! client CAs the config read and checked ([`ServerTls`]), the acceptor that
//! [`super::listener`] runs every accepted connection through (the pull port, and the admin
//! API when the pull port speaks TLS); the handshake counts against the listener's header
//! timeout.
//!
//! rustls with the aws-lc-rs provider (the one reqwest already uses for upstreams), TLS 1.2
//! and 1.3, ALPN `h2` and `http/1.1` (the listener then reads the HTTP/2 preface, or not). What
//! only building reveals (a key that does not go with the certificate, a CA rustls cannot
//! use) is a [`ConfigError`] naming the `serverTlsConfig` key, its line and the file; a
//! handshake that fails is one client's problem and never the server's.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuth, ConfigError, ServerTls, TlsKey};

/// Builds the acceptor for `cfg` from the material the config read.
pub fn acceptor_of(cfg: &ServerTls) -> Result<TlsAcceptor, ConfigError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg.invalid(TlsKey::Cert, format!("no usable TLS protocol version: {e}")))?;
    let builder = match cfg.client_auth {
        ClientAuth::Verify => {
            let mut roots = RootCertStore::empty();
            for c in &cfg.client_cas {
                roots.add(c.clone()).map_err(|e| {
                    cfg.invalid(TlsKey::Ca, format!("not a usable CA certificate: {e}"))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| {
                    cfg.invalid(
                        TlsKey::Ca,
                        format!("cannot verify client certificates with it: {e}"),
                    )
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        ClientAuth::None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(cfg.cert_chain.clone(), cfg.private_key.0.clone_key())
        .map_err(|e| {
            cfg.invalid(
                TlsKey::Key,
                format!(
                    "does not go with the certificate in {}: {e}",
                    cfg.cert.display()
                ),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

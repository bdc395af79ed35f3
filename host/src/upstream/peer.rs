//! The client side of the peer endpoint: asks the replica that holds a blob's fetch lease
//! (`cluster`) for the blob's bytes as they arrive there, with the cluster's bearer token,
//! giving a body the download consumes like an upstream's. It decides nothing about who
//! fetches what (the mirror does) and verifies nothing (the download does, by sha256, as
//! for any upstream body).

use std::time::Duration;

use futures_util::TryStreamExt;
use http::{StatusCode, header};
use ociregistry_plugin_api::Secret;

use super::calls::BlobBody;
use super::{BodyError, SetupProblem};
use crate::oci::reference::Digest;

/// Time allowed to connect to a peer: peers are near; one that does not answer this fast
/// is as good as gone (the caller fetches from the upstream instead).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The path of blob `digest` on the peer endpoint (on the pull port, outside `/v2/`).
pub fn blob_path(digest: &Digest) -> String {
    format!("/_ociregistry/peer/v1/blobs/{digest}")
}

/// Why a peer gave no body.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// No answer (connection refused, timed out, broken).
    #[error("peer {peer} could not be reached: {reason}")]
    Unreachable {
        /// The peer's advertised URL.
        peer: String,
        /// What the transport said.
        reason: String,
    },
    /// It answered with another status than 200.
    #[error("peer {peer} answered {status}")]
    Refused {
        /// The peer's advertised URL.
        peer: String,
        /// The status.
        status: u16,
    },
}

/// Streams blobs from the other replicas.
pub struct PeerClient {
    client: reqwest::Client,
    token: Secret,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient").finish_non_exhaustive()
    }
}

impl PeerClient {
    /// A client sending `token`; a body with no data for `idle` breaks off.
    pub fn new(token: Secret, idle: Duration) -> Result<PeerClient, SetupProblem> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("ociregistry/", env!("CARGO_PKG_VERSION"), " peer"))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(idle)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| SetupProblem::Client(super::describe(&e)))?;
        Ok(PeerClient { client, token })
    }

    /// `GET` of blob `digest` from the peer at `peer` (its advertised base URL): the body as
    /// it starts arriving.
    pub async fn get_blob(&self, peer: &str, digest: &Digest) -> Result<BlobBody, PeerError> {
        let url = format!("{}{}", peer.trim_end_matches('/'), blob_path(digest));
        let resp = self
            .client
            .get(&url)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.token.expose()),
            )
            .send()
            .await
            .map_err(|e| PeerError::Unreachable {
                peer: peer.to_owned(),
                reason: super::describe(&e),
            })?;
        if resp.status() != StatusCode::OK {
            return Err(PeerError::Refused {
                peer: peer.to_owned(),
                status: resp.status().as_u16(),
            });
        }
        Ok(BlobBody {
            total: resp.content_length(),
            body: Box::pin(resp.bytes_stream().map_err(BodyError::from)),
        })
    }
}

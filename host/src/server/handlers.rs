//! Dispatching a request to its route ([`super::manifests`], [`super::blobs`],
//! [`super::passthrough`], or [`super::hello`] for the built-in image) and answering its
//! failure as an OCI error.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Response, header};

use crate::metrics::RouteKind;
use crate::mirror::Mirror;
use crate::server::error::RegistryError;
use crate::server::response::{self, Body};
use crate::server::router::{self, Route, Target};
use crate::upstream::canonical_name;

/// Answers one request.
pub async fn handle(
    app: Arc<Mirror>,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Response<Body> {
    if uri.path().starts_with(super::peer::PREFIX) {
        return super::peer::handle(&app, method, uri.path(), headers).await;
    }
    let head = method == Method::HEAD;
    let mut kind = RouteKind::Invalid;
    let resp = match route(&app, method, uri, headers, &mut kind).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(%method, path = uri.path(), status = e.status.as_u16(), error = %e.message, "request failed");
            } else {
                tracing::debug!(%method, path = uri.path(), status = e.status.as_u16(), error = %e.message, "request refused");
            }
            response::error(&e, head)
        }
    };
    crate::metrics::global().request(kind, resp.status().as_u16());
    response::with_api_version(resp)
}

async fn route(
    app: &Arc<Mirror>,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    kind: &mut RouteKind,
) -> Result<Response<Body>, RegistryError> {
    let target = router::parse(uri.path(), uri.query(), &app.settings.default_ns, |a| {
        app.settings.alias_target(a).map(str::to_owned)
    })?;
    *kind = RouteKind::from(&target.route);
    let head = *method == Method::HEAD;
    if !(head || *method == Method::GET) {
        return Err(RegistryError::unsupported(format!(
            "{method} is not supported: this registry is a pull-only mirror"
        )));
    }
    let Target {
        route,
        registry,
        repo,
        via,
    } = target;
    let Some(repo) = repo else {
        return Ok(json_ok(b"{}", head));
    };
    if super::hello::wanted(app.settings.hello_world, &via, &repo) {
        return super::hello::answer(route, &repo, headers, head);
    }
    let registry = canonical_name(&registry);
    // Docker Hub's one-component names live under `library/` there: cached under the same
    // name whichever way a client spells it (`alpine` or `library/alpine`), as `load` and
    // `load --archive` store them.
    let repo = if registry == crate::upstream::DOCKER_HUB {
        repo.with_library_prefix()
    } else {
        repo
    };
    match route {
        Route::Base => Ok(json_ok(b"{}", head)),
        Route::Upload => Err(RegistryError::unsupported(
            "uploads are not supported: this registry is a pull-only mirror",
        )),
        Route::Manifest(reference) => {
            super::manifests::manifest(app, registry, &repo, reference, headers, head).await
        }
        Route::Blob(digest) => {
            super::blobs::blob(app, registry, &repo, digest, headers, head).await
        }
        Route::Tags => {
            super::passthrough::passthrough(
                app,
                registry,
                &repo,
                "tags/list",
                uri.query(),
                &via,
                head,
            )
            .await
        }
        Route::Referrers(d) => {
            super::passthrough::passthrough(
                app,
                registry,
                &repo,
                &format!("referrers/{d}"),
                uri.query(),
                &via,
                head,
            )
            .await
        }
    }
}

pub(super) fn json_ok(body: &'static [u8], head: bool) -> Response<Body> {
    let mut resp = response::bytes(body, head);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

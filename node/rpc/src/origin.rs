//! The RPC server's origin filter (`--rpc-cors`): an HTTP request or WebSocket upgrade from a
//! browser page whose origin is not allowed is answered 403 before any method runs; allowed
//! pages get their CORS preflight answered and may read the answers.

use bitorch_primitives::origins::Origins;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A tower layer that applies [`Origins`] to every request.
#[derive(Clone, Debug)]
pub struct OriginLayer(Arc<Origins>);

impl OriginLayer {
    /// Filters by `origins`.
    pub fn new(origins: Origins) -> Self {
        Self(Arc::new(origins))
    }
}

impl<S> tower::Layer<S> for OriginLayer {
    type Service = OriginFilter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OriginFilter { inner, origins: self.0.clone() }
    }
}

/// The service [`OriginLayer`] makes.
#[derive(Clone, Debug)]
pub struct OriginFilter<S> {
    inner: S,
    origins: Arc<Origins>,
}

fn response(status: u16, body: String) -> HttpResponse {
    let mut r = HttpResponse::new(HttpBody::from(body));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::FORBIDDEN);
    r
}

impl<S, B> tower::Service<HttpRequest<B>> for OriginFilter<S>
where
    S: tower::Service<HttpRequest<B>, Response = HttpResponse>,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: HttpRequest<B>) -> Self::Future {
        let origin = request.headers().get(http::header::ORIGIN).cloned();
        let text = origin.as_ref().map(|o| o.to_str().unwrap_or("(not text)"));
        if !self.origins.allows(text) {
            tracing::debug!(target: "rpc", origin = ?text, "refused a request from a disallowed origin");
            let body = format!(
                "requests from the web page at {} may not use this node's RPC; the operator \
                 allows origins with --rpc-cors\n",
                text.unwrap_or_default()
            );
            return Box::pin(async move { Ok(response(403, body)) });
        }
        if request.method() == http::Method::OPTIONS {
            let mut r = response(204, String::new());
            let h = r.headers_mut();
            h.insert(
                http::header::ACCESS_CONTROL_ALLOW_METHODS,
                http::HeaderValue::from_static("POST, GET"),
            );
            h.insert(
                http::header::ACCESS_CONTROL_ALLOW_HEADERS,
                http::HeaderValue::from_static("content-type"),
            );
            if let Some(o) = origin {
                h.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            }
            return Box::pin(async move { Ok(r) });
        }
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut r = answer.await.map_err(Into::into)?;
            if let Some(o) = origin {
                r.headers_mut().insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
                r.headers_mut()
                    .insert(http::header::VARY, http::HeaderValue::from_static("origin"));
            }
            Ok(r)
        })
    }
}

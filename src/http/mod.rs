//! The HTTP edge: the check listener (SPEC §4), the admin listener
//! (SPEC §5), the accept loop and limits they share, one error type with
//! one renderer, metrics, and the JSON views of answers.
//!
//! Handlers are thin: the check routes parse a request into a `Query` and
//! call the core's `decide`; the admin routes validate a body into a store
//! request and call the store, then wait for the node to publish.

pub mod admin;
pub mod check;
pub mod console;
pub mod error;
pub mod grpc;
pub mod listener;
pub mod metrics;
pub mod tls;
pub mod wire;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper::StatusCode;
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use tracing::debug;

use crate::http::error::ApiError;
use crate::http::metrics::{Endpoint, Metrics};

/// Largest accepted request body (a population import is streamed instead).
pub const MAX_BODY: usize = 64 * 1024;

/// A whole answer.
pub type Answer = Response<Full<Bytes>>;

/// An answer with a status, a content type and a body.
pub fn respond(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A `200` JSON answer.
pub(crate) fn json(body: Vec<u8>) -> Answer {
    respond(200, "application/json", body)
}

/// An error answer from either listener: counted, logged at debug (a
/// client's error is the client's business, not an operator's), rendered.
pub(crate) fn error_answer(metrics: &Metrics, endpoint: Endpoint, e: &ApiError) -> Answer {
    metrics.error(endpoint, e.code);
    debug!(
        code = e.code.as_str(),
        field = e.field.as_deref(),
        status = e.status(),
        "error answer"
    );
    error::render(e)
}

/// [`read_body`] within `deadline` of the head: a client that trickles its
/// body gets `408` and loses the connection.
pub(crate) async fn read_body_within<B>(
    body: B,
    declared: Option<u64>,
    deadline: std::time::Duration,
) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    use futures_util::FutureExt as _;
    let mut reading = std::pin::pin!(read_body(body, declared));
    // Nearly every body arrives with its head: answer it without a timer.
    if let Some(done) = reading.as_mut().now_or_never() {
        return done;
    }
    tokio::time::timeout(deadline, reading)
        .await
        .unwrap_or_else(|_| Err(ApiError::request_timeout(deadline)))
}

/// Reads the whole body, refusing more than [`MAX_BODY`]. The usual body
/// arrives as one frame and is returned as is, without copying.
pub(crate) async fn read_body<B>(body: B, declared: Option<u64>) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::body_too_large());
    }
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut more: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::invalid_body("the body could not be read"))?;
        let Ok(data) = frame.into_data() else { continue };
        // `more`, once started, holds the first frame too.
        let so_far = if more.is_empty() {
            first.as_ref().map_or(0, Bytes::len)
        } else {
            more.len()
        };
        let len = so_far + data.len();
        if len > MAX_BODY {
            return Err(ApiError::body_too_large());
        }
        match &first {
            None => first = Some(data),
            Some(f) => {
                if more.is_empty() {
                    more.extend_from_slice(f);
                }
                more.extend_from_slice(&data);
            }
        }
    }
    Ok(if more.is_empty() {
        first.unwrap_or_default()
    } else {
        Bytes::from(more)
    })
}

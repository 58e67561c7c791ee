//! Errors as the listeners answer them: [`ErrorCode`], the closed list of
//! SPEC §4/§5 codes with their HTTP status, [`ApiError`], and [`render`],
//! the one place either listener turns an error into an answer.
//!
//! Nothing here echoes client input: a body may carry a real person's
//! number in any field, so messages name the field and say what is wrong
//! with it, never quote it.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{self, HeaderValue};
use serde::Serialize;

use crate::core::identity::IdentityError;
use crate::core::time::InstantError;

/// Every error code the listeners answer with. Metrics count them by
/// variant; the wire name is [`ErrorCode::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The body is not JSON.
    InvalidJson,
    /// An identity number is not valid.
    InvalidIdentifier,
    /// A valid number of a kind the service does not take (reserve numbers).
    UnsupportedIdentifier,
    /// Not `journal` or `eservices`.
    InvalidService,
    /// An instant or date cannot be read.
    InvalidTime,
    /// A field is missing, of the wrong shape, or (with status 422) does not
    /// make sense.
    InvalidRequest,
    /// Over 64 KiB.
    BodyTooLarge,
    /// The body did not arrive within the listener's deadline.
    RequestTimeout,
    /// Cannot decide or write now: nothing loaded, the store lost, or a
    /// revision not reached.
    NotReady,
    /// No such route, restriction or grant.
    NotFound,
    /// The route exists with another method.
    MethodNotAllowed,
    /// No valid bearer token.
    Unauthorized,
    /// The role may not do this.
    Forbidden,
    /// Only the issuing unit may do this.
    WrongUnit,
    /// Lifted before.
    AlreadyLifted,
    /// Not an urgent restriction waiting for its form.
    AlreadyConfirmed,
    /// The service failed; nothing was written.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order metrics render them.
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidIdentifier,
        ErrorCode::UnsupportedIdentifier,
        ErrorCode::InvalidService,
        ErrorCode::InvalidTime,
        ErrorCode::InvalidRequest,
        ErrorCode::BodyTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::NotReady,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::WrongUnit,
        ErrorCode::AlreadyLifted,
        ErrorCode::AlreadyConfirmed,
        ErrorCode::Internal,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidIdentifier => "invalid_identifier",
            ErrorCode::UnsupportedIdentifier => "unsupported_identifier",
            ErrorCode::InvalidService => "invalid_service",
            ErrorCode::InvalidTime => "invalid_time",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::WrongUnit => "wrong_unit",
            ErrorCode::AlreadyLifted => "already_lifted",
            ErrorCode::AlreadyConfirmed => "already_confirmed",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status it is answered with (an `invalid_request` that is
    /// well-formed but makes no sense is 422: see [`ApiError::semantic`]).
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidIdentifier
            | ErrorCode::UnsupportedIdentifier
            | ErrorCode::InvalidService
            | ErrorCode::InvalidTime
            | ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::WrongUnit => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::AlreadyLifted | ErrorCode::AlreadyConfirmed => 409,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::BodyTooLarge => 413,
            ErrorCode::Internal => 500,
            ErrorCode::NotReady => 503,
        }
    }

    /// Its place in [`ErrorCode::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// An error answer: code (and so status), message and the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// What kind of error.
    pub code: ErrorCode,
    /// What is wrong, naming the field; never the input.
    pub message: Cow<'static, str>,
    /// The request field, if the error is about one.
    pub field: Option<Cow<'static, str>>,
    /// For a population import: the line (from 1) that is wrong.
    pub line: Option<u64>,
    /// The request wants a revision this instance has not published yet:
    /// worth waiting a little for before answering with this error.
    pub wait_for: Option<u64>,
    /// Well-formed but senseless (`422` rather than `400`).
    semantic: bool,
    /// For `405`: the route's one method.
    allow: Option<&'static str>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>, field: Option<&'static str>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: field.map(Cow::Borrowed),
            line: None,
            wait_for: None,
            semantic: false,
            allow: None,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        if self.semantic { 422 } else { self.code.status() }
    }

    /// The same error about a field whose name is made at run time (`guardians[1]`).
    pub fn with_field(mut self, field: String) -> Self {
        self.field = Some(Cow::Owned(field));
        self
    }

    /// The same error, located on a line of a population import.
    pub fn on_line(mut self, line: u64) -> Self {
        self.message = Cow::Owned(format!("line {line}: {}", self.message));
        self.line = Some(line);
        self
    }

    /// The request asks for `revision`, which this instance has not reached.
    pub fn behind(revision: u64) -> Self {
        ApiError {
            wait_for: Some(revision),
            ..ApiError::new(
                ErrorCode::NotReady,
                "this instance has not reached the requested `min_revision` yet; try again",
                Some("min_revision"),
            )
        }
    }

    /// The body is not JSON.
    pub fn invalid_json() -> Self {
        ApiError::new(ErrorCode::InvalidJson, "the body is not valid JSON", None)
    }

    /// A field is missing or has the wrong shape.
    pub fn invalid_request(field: &'static str, what: &str) -> Self {
        ApiError::new(ErrorCode::InvalidRequest, format!("`{field}`: {what}"), Some(field))
    }

    /// A field is well-formed but does not make sense (`422`): a date
    /// already past, a guardian who is not one.
    pub fn semantic(field: &'static str, what: &str) -> Self {
        ApiError {
            semantic: true,
            ..ApiError::invalid_request(field, what)
        }
    }

    /// The body as a whole has the wrong shape.
    pub fn invalid_body(what: &'static str) -> Self {
        ApiError::new(ErrorCode::InvalidRequest, what, None)
    }

    /// An identity field does not hold an accepted number.
    pub fn identity(field: &'static str, e: IdentityError) -> Self {
        let code = match e {
            IdentityError::ReserveNumber => ErrorCode::UnsupportedIdentifier,
            _ => ErrorCode::InvalidIdentifier,
        };
        debug_assert_eq!(code.as_str(), e.code());
        ApiError::new(code, format!("`{field}`: {e}"), Some(field))
    }

    /// The service is not `journal` or `eservices`.
    pub fn invalid_service(field: &'static str) -> Self {
        ApiError::new(
            ErrorCode::InvalidService,
            format!("`{field}`: must be `journal` or `eservices`"),
            Some(field),
        )
    }

    /// An instant cannot be read.
    pub fn invalid_time(field: &'static str, e: InstantError) -> Self {
        ApiError::new(ErrorCode::InvalidTime, format!("`{field}`: {e}"), Some(field))
    }

    /// The body is over 64 KiB.
    pub fn body_too_large() -> Self {
        ApiError::new(ErrorCode::BodyTooLarge, "the body is larger than 64 KiB", None)
    }

    /// No snapshot is loaded: the service cannot decide.
    pub fn not_ready() -> Self {
        ApiError::new(ErrorCode::NotReady, "no data is loaded yet; cannot decide", None)
    }

    /// Why a published instance refuses to answer, as an error.
    pub fn refused(refusal: Option<crate::node::Refusal>) -> Self {
        match refusal {
            Some(crate::node::Refusal::Behind(revision)) => ApiError::new(
                ErrorCode::NotReady,
                format!(
                    "this instance has not yet published the committed write at revision {revision}; cannot decide"
                ),
                None,
            ),
            _ => ApiError::stale(),
        }
    }

    /// The body did not arrive in time.
    pub fn request_timeout(within: std::time::Duration) -> Self {
        ApiError::new(
            ErrorCode::RequestTimeout,
            format!("the body did not arrive within {} s", within.as_secs_f64()),
            None,
        )
    }

    /// The store has been out of reach for longer than `max_staleness`.
    pub fn stale() -> Self {
        ApiError::new(
            ErrorCode::NotReady,
            "this instance has lost its store for longer than allowed; cannot decide",
            None,
        )
    }

    /// No such route.
    pub fn not_found() -> Self {
        ApiError::new(ErrorCode::NotFound, "no such endpoint", None)
    }

    /// The route exists, but only with `allow` (`GET` or `POST`).
    pub fn method_not_allowed(allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this endpoint", None)
        }
    }

    /// The service failed; nothing was written.
    pub fn internal(what: &'static str) -> Self {
        ApiError::new(ErrorCode::Internal, what, None)
    }

    /// The JSON body of this error.
    pub fn body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Outer<'a> {
            error: ErrorView<'a>,
        }
        serde_json::to_vec(&Outer { error: self.view() }).unwrap_or_default()
    }

    /// The `{"code", "message", "field"}` object, alone or inside a batch.
    pub fn view(&self) -> ErrorView<'_> {
        ErrorView {
            code: self.code.as_str(),
            message: &self.message,
            field: self.field.as_deref(),
            line: self.line,
        }
    }
}

/// An error as JSON.
#[derive(Debug, Serialize)]
pub struct ErrorView<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
}

/// The one place an error becomes an HTTP answer, for both listeners: the
/// status, the JSON body, `WWW-Authenticate` on a `401` and `Allow` on a
/// `405`.
pub fn render(e: &ApiError) -> Response<Full<Bytes>> {
    let mut r = super::respond(e.status(), "application/json", e.body());
    if e.code == ErrorCode::Unauthorized {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(allow) = e.allow {
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_listed_once_in_order() {
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?}");
        }
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn the_renderer_sets_status_and_headers() {
        let r = render(&ApiError::method_not_allowed("GET"));
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[header::ALLOW], "GET");
        let r = render(&ApiError::new(ErrorCode::Unauthorized, "no", None));
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let r = render(&ApiError::semantic("valid_until", "is past"));
        assert_eq!(r.status(), 422);
        assert!(r.headers().get(header::ALLOW).is_none());
    }
}

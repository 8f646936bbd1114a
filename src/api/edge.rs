//! The guards every request passes ([`guard`]): a cap on requests in flight, no control
//! characters in the path or query, a cap on the body, a deadline on the whole request, and
//! the `Allow` header on 405s.
//!
//! Each guard answers with the JSON error body and a `code`, like the handlers do; none of
//! them lets a client make the service hold more memory or time than its limits.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Body, Endpoint, IntoResponse, Request, Response};
use tokio::sync::Semaphore;

use super::allowlist;
use super::error::{ErrorBody, ErrorCode, RETRY_AFTER_SECONDS};

/// The limits of the edge (see `Config` for the variables that set them).
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// How long a buyer's purchase or join waits for its answer (its group-commit batch's
    /// decision) before a 503, with `outcomeUnknown` once its statement was sent
    /// (`DB_TIMEOUT_MS`). The batchers get it; the edge cuts every request off a second
    /// later ([`EdgeLimits::request_deadline`]).
    pub answer_timeout: Duration,
    /// Requests handled at once.
    pub max_in_flight: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            answer_timeout: Duration::from_secs(4),
            max_in_flight: 10_000,
            max_body_bytes: 16 * 1024,
        }
    }
}

impl EdgeLimits {
    /// The deadline of a whole request, any route: past it the edge answers 503 itself. A
    /// second after the answer timeout, so that a purchase's or join's own answer, which
    /// knows whether its write was sent, comes first.
    pub fn request_deadline(&self) -> Duration {
        self.answer_timeout + Duration::from_secs(1)
    }
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    ErrorBody::json(code, message)
        .with_status(status)
        .into_response()
}

fn unavailable(message: &str) -> Response {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        message,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

/// The guards, with what they need, shared by every request.
pub struct Edge {
    limits: EdgeLimits,
    /// One permit per request in flight.
    permits: Semaphore,
    allowed: AllowedMethods,
}

impl Edge {
    /// The guards for `limits`; the `Allow` header's methods come from the OpenAPI `spec`.
    pub fn new(limits: EdgeLimits, spec: &str) -> Self {
        Self {
            limits,
            permits: Semaphore::new(limits.max_in_flight),
            allowed: AllowedMethods::from_spec(spec),
        }
    }
}

/// Every guard, in one layer (one layer costs one async frame a request; as five layers
/// they cost about 5% of the purchase throughput, measured):
/// 1. a request past `max_in_flight` is refused at once with 503: under overload a quick
///    answer beats a growing line of requests that each hold memory;
/// 2. a control character (NUL included) in the decoded path or query is 400: no such byte
///    is ever a valid sku, id or user, and Postgres refuses NUL in text;
/// 3. a body over `max_body_bytes` is 413, without reading more than that of it;
/// 4. the whole request gets [`EdgeLimits::request_deadline`]: past it the client hears
///    503 instead of waiting on a database that does not answer (purchases and joins have
///    the tighter answer timeout of their own that tells an unknown outcome apart; this is
///    the backstop);
/// 5. a 405 gets the `Allow` header HTTP requires.
pub async fn guard<E: Endpoint>(
    next: E,
    mut req: Request,
    edge: Arc<Edge>,
) -> poem::Result<Response> {
    let Ok(_permit) = edge.permits.try_acquire() else {
        return Ok(unavailable(
            "the service is at its limit of requests in flight; retry in a second",
        ));
    };
    if has_control_characters(req.uri()) {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "the path or query contains a control character",
        ));
    }
    let upload = is_allowlist_upload(req.method(), req.uri().path());
    let refusal = if upload {
        // Streamed by its route, which stops reading at its own cap.
        limit_declared_body(&req, allowlist::ids::MAX_UPLOAD_BYTES)
    } else {
        limit_body(&mut req, edge.limits.max_body_bytes).await
    };
    if let Some(refusal) = refusal {
        return Ok(refusal);
    }
    // A clone of the URI shares its bytes: no copy on the way of every request.
    let uri = req.uri().clone();
    let options = *req.method() == Method::OPTIONS;
    let deadline = if upload {
        allowlist::UPLOAD_DEADLINE
    } else {
        edge.limits.request_deadline()
    };
    let mut response = match tokio::time::timeout(deadline, next.call(req)).await {
        Ok(result) => result.map(IntoResponse::into_response)?,
        Err(_) => {
            tracing::warn!("request timed out waiting on the database");
            unavailable(
                "the request timed out waiting for the database: a write may or may not have \
                 taken effect; every buyer route is safe to retry",
            )
        }
    };
    if (response.status() == StatusCode::METHOD_NOT_ALLOWED || options)
        && let Some(value) = edge
            .allowed
            .for_path(uri.path())
            .and_then(|methods| HeaderValue::from_str(methods).ok())
    {
        response.headers_mut().insert(header::ALLOW, value);
    }
    Ok(response)
}

/// An allow-list upload (`PUT` or `POST /api/v1/admin/sales/{sale}/allowlist`): a body of
/// up to 64 MiB, streamed by its route, and a deadline of minutes instead of seconds.
fn is_allowlist_upload(method: &Method, path: &str) -> bool {
    (*method == Method::PUT || *method == Method::POST)
        && path
            .strip_prefix("/api/v1/admin/sales/")
            .and_then(|rest| rest.strip_suffix("/allowlist"))
            .is_some_and(|sale| !sale.is_empty() && !sale.contains('/'))
}

/// The 413 for a body whose `Content-Length` is over `limit` bytes (a chunked body is
/// counted by whoever reads it).
fn limit_declared_body(req: &Request, limit: u64) -> Option<Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())?;
    (declared > limit).then(|| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            &format!("the upload is larger than {limit} bytes"),
        )
    })
}

/// The 413 for a body over `limit` bytes, read no further than `limit + 1` bytes: at once
/// from `Content-Length`, else while reading a chunked body (whose bytes are handed on).
async fn limit_body(req: &mut Request, limit: usize) -> Option<Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            &format!("the request body is larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => Some(too_large()),
        Some(_) => None,
        None => match req.take_body().into_bytes_limit(limit).await {
            Ok(bytes) => {
                req.set_body(Body::from_bytes(bytes));
                None
            }
            Err(poem::error::ReadBodyError::PayloadTooLarge) => Some(too_large()),
            Err(err) => Some(error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                &format!("could not read the request body: {err}"),
            )),
        },
    }
}

/// Whether the decoded path or query holds a control character.
fn has_control_characters(uri: &poem::http::Uri) -> bool {
    [Some(uri.path()), uri.query()]
        .into_iter()
        .flatten()
        .any(has_control_character)
}

/// Whether `part`, percent-decoded, holds a control character; decodes (and allocates)
/// only when there is an escape to decode, which a plain purchase path has not.
fn has_control_character(part: &str) -> bool {
    if part.contains('%') {
        percent_decode(part).chars().any(char::is_control)
    } else {
        part.chars().any(char::is_control)
    }
}

/// `%XX` decoded (invalid escapes kept as they are), read as UTF-8 with replacement.
fn percent_decode(text: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy()
}

/// The methods each path template of the API allows, for the `Allow` header of a 405.
#[derive(Debug, Default)]
pub struct AllowedMethods {
    /// (path segments, `{param}` matching any one segment; methods).
    routes: Vec<(Vec<String>, String)>,
}

impl AllowedMethods {
    /// Reads the path templates and their methods from the OpenAPI document.
    pub fn from_spec(spec: &str) -> Self {
        let Ok(spec) = serde_json::from_str::<serde_json::Value>(spec) else {
            return Self::default();
        };
        let Some(paths) = spec.get("paths").and_then(|paths| paths.as_object()) else {
            return Self::default();
        };
        let routes = paths
            .iter()
            .map(|(template, item)| {
                let mut methods: Vec<String> = item
                    .as_object()
                    .map(|ops| ops.keys().map(|m| m.to_ascii_uppercase()).collect())
                    .unwrap_or_default();
                methods.sort();
                (segments(template), methods.join(", "))
            })
            .collect();
        Self { routes }
    }

    /// The `Allow` value for a concrete path.
    pub fn for_path(&self, path: &str) -> Option<&str> {
        let actual = segments(path);
        self.routes
            .iter()
            .find(|(template, _)| {
                template.len() == actual.len()
                    && template
                        .iter()
                        .zip(&actual)
                        .all(|(want, got)| want.starts_with('{') || want == got)
            })
            .map(|(_, methods)| methods.as_str())
    }
}

fn segments(path: &str) -> Vec<String> {
    path.trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_reveals_control_characters() {
        assert!(has_control_character("/a%00b"));
        assert!(!has_control_character("/api/v1/sales/drop-1/purchases"));
        assert!(percent_decode("/a%00b").chars().any(char::is_control));
        assert!(percent_decode("/a%C2%85").chars().any(char::is_control));
        assert!(!percent_decode("/sale-1%2Fx").chars().any(char::is_control));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn allowed_methods_match_templates_segment_by_segment() {
        let spec = r#"{"paths": {"/api/v1/sales/{sale}": {"get": {}},
                                 "/api/v1/sales/{sale}/queue/{user_id}": {"get": {}, "delete": {}}}}"#;
        let allowed = AllowedMethods::from_spec(spec);
        assert_eq!(allowed.for_path("/api/v1/sales/x"), Some("GET"));
        assert_eq!(
            allowed.for_path("/api/v1/sales/x/queue/u"),
            Some("DELETE, GET")
        );
        assert_eq!(allowed.for_path("/api/v1/sales/x/queue"), None);
    }
}

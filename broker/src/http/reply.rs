//! What handlers answer, and the error bodies of RabbitMQ's management API.
//!
//! ```text
//!  401 {"error":"not_authorized","reason":"Not_Authorized"}    login refused (or no credentials,
//!                                                              with WWW-Authenticate)
//!  401 {"error":"not_authorised","reason":"Not administrator user"}   tags or vhost access
//!  404 {"error":"Object Not Found","reason":"Not Found"}       no such path or object
//!  400 {"error":"bad_request","reason":...}                    bad input; AMQP errors as "406 ..."
//!  405 and a 401 without credentials: no body
//! ```

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue, LOCATION, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use crate::admin::listing::ListError;
use crate::error::AmqpError;

/// A handler's successful answer.
#[derive(Debug)]
pub(crate) enum Reply {
    /// 200 with a JSON body.
    Json(Value),
    /// 201, nothing in the body; `Location` when the created object has a new address.
    Created(Option<String>),
    /// 204.
    NoContent,
    /// Any status with a JSON body (the health checks' 503s).
    Status(StatusCode, Value),
}

/// A handler's refusal.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// No credentials: ask for them.
    Unauthenticated,
    /// Wrong user or password.
    LoginRefused,
    /// Authenticated, but not allowed this.
    NotAuthorised(String),
    /// No such path or object.
    NotFound,
    /// RabbitMQ's `not_found` halt with a reason (an AMQP 404 on the way).
    NotFoundBecause(String),
    /// Bad input.
    BadRequest(&'static str, String),
    /// The path exists, the method does not.
    MethodNotAllowed,
    /// The node cannot do it now.
    Unavailable(String),
}

pub(crate) type ApiResult<T = Reply> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn not_authorised(reason: impl Into<String>) -> ApiError {
        ApiError::NotAuthorised(reason.into())
    }

    pub(crate) fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::BadRequest("bad_request", reason.into())
    }

    /// What went wrong, in words (for logs and start errors).
    pub(crate) fn reason(&self) -> String {
        match self {
            ApiError::Unauthenticated | ApiError::LoginRefused => "not authorized".into(),
            ApiError::NotAuthorised(reason)
            | ApiError::NotFoundBecause(reason)
            | ApiError::BadRequest(_, reason)
            | ApiError::Unavailable(reason) => reason.clone(),
            ApiError::NotFound => "not found".into(),
            ApiError::MethodNotAllowed => "method not allowed".into(),
        }
    }

    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        match self {
            // As RabbitMQ (cowboy): no body, only the challenge.
            ApiError::Unauthenticated => {
                let mut response = empty(StatusCode::UNAUTHORIZED);
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
                );
                response
            }
            ApiError::LoginRefused => json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "not_authorized", "reason": "Not_Authorized"}),
            ),
            ApiError::NotAuthorised(reason) => json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "not_authorised", "reason": reason}),
            ),
            ApiError::NotFound => json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "Object Not Found", "reason": "Not Found"}),
            ),
            ApiError::NotFoundBecause(reason) => json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "reason": reason}),
            ),
            ApiError::BadRequest(kind, reason) => json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": kind, "reason": reason}),
            ),
            ApiError::MethodNotAllowed => empty(StatusCode::METHOD_NOT_ALLOWED),
            ApiError::Unavailable(reason) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "service_unavailable", "reason": reason}),
            ),
        }
    }
}

impl From<ListError> for ApiError {
    fn from(error: ListError) -> ApiError {
        ApiError::BadRequest(error.error, error.reason)
    }
}

/// AMQP errors of declarations, deletions and bindings as RabbitMQ's management API reports
/// them (its `rabbit_channel:handle_method` path): access refusals as `401 "Access refused."`,
/// 404 as `not_found` with the explanation, the rest as `400` with the explanation.
impl From<AmqpError> for ApiError {
    fn from(error: AmqpError) -> ApiError {
        match error.code.code() {
            403 | 530 => ApiError::not_authorised("Access refused."),
            404 => ApiError::NotFoundBecause(error.explanation),
            _ => ApiError::bad_request(error.explanation),
        }
    }
}

/// A body key RabbitMQ requires, missing: its `[{key_missing,KEY}]` reason.
pub(crate) fn key_missing(keys: &[&str]) -> ApiError {
    let listed: Vec<String> = keys
        .iter()
        .map(|key| format!("{{key_missing,{key}}}"))
        .collect();
    ApiError::bad_request(format!("[{}]", listed.join(",")))
}

impl Reply {
    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        match self {
            Reply::Json(body) => json_response(StatusCode::OK, &body),
            Reply::Status(status, body) => json_response(status, &body),
            Reply::Created(location) => {
                let mut response = empty(StatusCode::CREATED);
                if let Some(location) = location
                    && let Ok(value) = HeaderValue::from_str(&location)
                {
                    response.headers_mut().insert(LOCATION, value);
                }
                response
            }
            Reply::NoContent => empty(StatusCode::NO_CONTENT),
        }
    }
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

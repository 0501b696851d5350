//! The Docker Engine API over HTTP: routing, version prefixes and errors.
//!
//! Handlers stay short: they parse the request, call the daemon and render
//! Docker's JSON. Errors render themselves as `{"message": ...}` with
//! Docker's status codes.

mod archive;
mod containers;
mod events;
mod exec;
mod images;
mod logs;
mod networks;
mod operations;
mod query;
mod render;
mod stats;
mod streams;
mod system;
mod volumes;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;

use crate::runtime::{Daemon, Error};

/// The newest API version sidewhale speaks, reported by `/_ping` and
/// `/version` so that clients negotiate down to it.
pub const API_VERSION: &str = "1.47";
/// The oldest API version accepted in a `/vX.Y/` prefix.
pub const MIN_API_VERSION: &str = "1.24";

pub type AppState = Arc<Daemon>;

/// A Docker-style error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        let status = match &error {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotModified => StatusCode::NOT_MODIFIED,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<sidewhale_core::ImageError> for ApiError {
    fn from(error: sidewhale_core::ImageError) -> ApiError {
        ApiError::from(Error::from(error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::NOT_MODIFIED {
            return StatusCode::NOT_MODIFIED.into_response();
        }
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, message = %self.message, "request failed");
        } else {
            tracing::debug!(status = %self.status, message = %self.message, "request rejected");
        }
        let body = serde_json::json!({ "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON request body. An empty body is the type's default, since
/// several clients send none where every field is optional.
pub fn parse_body<T: DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("invalid JSON in request body: {error}")))
}

/// Builds the router with every endpoint, wrapped so that `/v1.NN/`
/// prefixes are accepted.
pub fn router(daemon: AppState) -> Router {
    let routes = Router::new()
        .route("/_ping", get(system::ping).head(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/images/create", post(images::create))
        .route("/images/json", get(images::list))
        .route("/images/prune", post(operations::prune_images))
        .route("/events", get(events::events))
        .route("/containers/prune", post(operations::prune_containers))
        .route("/containers/{id}/stats", get(stats::stats))
        .route("/containers/{id}/top", get(stats::top))
        .route("/containers/{id}/rename", post(operations::rename))
        .route("/containers/{id}/resize", post(operations::resize))
        .route("/containers/{id}/pause", post(operations::pause))
        .route("/containers/{id}/unpause", post(operations::unpause))
        .route(
            "/images/{*name}",
            get(images::get_by_suffix).post(images::post_by_suffix).delete(images::remove),
        )
        .route("/containers/create", post(containers::create))
        .route("/containers/json", get(containers::list))
        .route("/containers/{id}/json", get(containers::inspect))
        .route("/containers/{id}/start", post(containers::start))
        .route("/containers/{id}/stop", post(containers::stop))
        .route("/containers/{id}/restart", post(containers::restart))
        .route("/containers/{id}/kill", post(containers::kill))
        .route("/containers/{id}/wait", post(containers::wait))
        .route("/containers/{id}/logs", get(logs::logs))
        .route("/containers/{id}/attach", post(logs::attach))
        .route("/containers/{id}", axum::routing::delete(containers::remove))
        .route(
            "/containers/{id}/archive",
            get(archive::get).head(archive::head).put(archive::put),
        )
        .route("/volumes", get(volumes::list))
        .route("/volumes/create", post(volumes::create))
        .route("/volumes/prune", post(volumes::prune))
        .route("/volumes/{name}", get(volumes::inspect).delete(volumes::remove))
        .route("/containers/{id}/exec", post(exec::create))
        .route("/exec/{id}/start", post(exec::start))
        .route("/exec/{id}/json", get(exec::inspect))
        .route("/exec/{id}/resize", post(exec::resize))
        .route("/networks", get(networks::list))
        .route("/networks/create", post(networks::create))
        .route("/networks/prune", post(networks::prune))
        .route("/networks/{id}", get(networks::inspect).delete(networks::remove))
        .route("/networks/{id}/connect", post(networks::connect))
        .route("/networks/{id}/disconnect", post(networks::disconnect))
        .fallback(not_found)
        .with_state(daemon);
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::map_request(strip_version))
        .layer(axum::middleware::map_request(reject_oversized_body))
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY))
}

/// The largest JSON request body accepted. Docker sets no limit; this one
/// only stops a runaway client from exhausting memory. Archive uploads are
/// streamed and not subject to it.
const MAX_JSON_BODY: usize = 64 * 1024 * 1024;

/// Rejects a JSON body whose announced length is over the limit before any
/// of it is read. Archive uploads are exempt.
async fn reject_oversized_body(request: Request) -> Result<Request, ApiError> {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let is_archive = request.uri().path().ends_with("/archive");
    match length {
        Some(length) if !is_archive && length > MAX_JSON_BODY as u64 => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {length} bytes is over the limit of {MAX_JSON_BODY} bytes"),
        )),
        _ => Ok(request),
    }
}

/// Turns the plain-text rejections of axum's extractors (a body over the
/// limit, a malformed path) into Docker's JSON errors.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_text = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !is_text {
        return response;
    }
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    ApiError::new(status, String::from_utf8_lossy(&bytes).trim().to_string()).into_response()
}

async fn not_found(request: Request) -> ApiError {
    tracing::debug!(method = %request.method(), uri = %request.uri(), "no such endpoint");
    ApiError::new(StatusCode::NOT_FOUND, "page not found")
}

/// Removes a `/vX.Y` prefix from the path, rejecting versions outside the
/// supported range as Docker does.
async fn strip_version(mut request: Request) -> Result<Request, ApiError> {
    let path = request.uri().path();
    let Some(rest) = path.strip_prefix("/v") else {
        return Ok(request);
    };
    let (version, remainder) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Some(parsed) = parse_version(version) else {
        return Ok(request);
    };
    if parsed < parse_version(MIN_API_VERSION).unwrap_or_default() {
        return Err(ApiError::bad_request(format!(
            "client version {version} is too old. Minimum supported API version is \
             {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    if parsed > parse_version(API_VERSION).unwrap_or_default() {
        return Err(ApiError::bad_request(format!(
            "client version {version} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    let remainder = if remainder.is_empty() { "/" } else { remainder };
    let uri = match request.uri().query() {
        Some(query) => format!("{remainder}?{query}"),
        None => remainder.to_string(),
    };
    *request.uri_mut() = uri
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid request path: {uri}")))?;
    Ok(request)
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Builds a response whose body is streamed, with Docker's headers.
pub fn streaming(content_type: &'static str, body: Body) -> Response {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

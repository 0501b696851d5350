//! `/images/...` endpoints.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sidewhale_core::{ImageError, ImageSource, PullProgress, Reference};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::query::{self, flag};
use super::render;
use super::{streaming, ApiError, ApiResult, AppState};
use crate::runtime::ryuk;

/// Builds the reference of `POST /images/create` from `fromImage` and
/// `tag`, where `tag` may also be a digest.
fn pull_reference(query: &query::Query) -> ApiResult<Reference> {
    let from = query
        .get("fromImage")
        .filter(|from| !from.is_empty())
        .ok_or_else(|| ApiError::bad_request("fromImage is required; importing with fromSrc is not supported"))?;
    let text = match query.get("tag").map(String::as_str) {
        None | Some("") => from.clone(),
        Some(tag) if tag.starts_with("sha256:") => format!("{from}@{tag}"),
        Some(tag) => format!("{from}:{tag}"),
    };
    Reference::parse(&text).map_err(|error| ApiError::bad_request(error.to_string()))
}

/// Renders a progress step as a line of Docker's JSON stream.
fn progress_line(step: &PullProgress) -> Bytes {
    let mut line = json!({"status": step.status});
    if let Some(id) = &step.id {
        line["id"] = json!(id);
    }
    if step.id.is_some() && step.status != "Pulling from" {
        let mut detail = json!({});
        if let Some(current) = step.current {
            detail["current"] = json!(current);
            if let Some(total) = step.total {
                detail["total"] = json!(total);
                line["progress"] = json!(progress_bar(current, total));
            }
        }
        line["progressDetail"] = detail;
    }
    Bytes::from(format!("{line}\r\n"))
}

/// Draws Docker's 50-column progress bar followed by the sizes.
fn progress_bar(current: u64, total: u64) -> String {
    const WIDTH: usize = 50;
    let filled = if total == 0 { 0 } else { (current.min(total) as usize * WIDTH) / total as usize };
    let bar = match filled {
        0 => " ".repeat(WIDTH),
        WIDTH => "=".repeat(WIDTH),
        _ => format!("{}>{}", "=".repeat(filled - 1), " ".repeat(WIDTH - filled)),
    };
    format!("[{bar}] {}/{}", human_size(current), human_size(total))
}

/// Formats a size with four significant digits and decimal units, as
/// Docker's `units.HumanSize` does.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let integer_digits = if value < 1.0 { 1 } else { value.log10().floor() as usize + 1 };
    let decimals = 4usize.saturating_sub(integer_digits);
    let mut text = format!("{value:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}

fn error_line(error: &ImageError) -> Bytes {
    let message = error.to_string();
    Bytes::from(format!("{}\r\n", json!({"errorDetail": {"message": message}, "error": message})))
}

/// Pulls an image, streaming progress. An error before any progress is a
/// plain JSON error with a status code; later ones are error lines.
pub async fn create(
    State(daemon): State<AppState>,
    Query(query): Query<query::Query>,
) -> ApiResult<Response> {
    let reference = pull_reference(&query)?;
    if ryuk::is_ryuk_image(&reference.to_string()) {
        // sidewhale serves Ryuk itself, so there is nothing to pull.
        let status = format!("Status: Image is up to date for {}", reference.familiar());
        let line = progress_line(&PullProgress::status(status));
        return Ok(streaming("application/json", Body::from(line)));
    }
    let (sender, mut progress) = mpsc::channel::<PullProgress>(64);
    let images = daemon.images.clone();
    let pulled = reference.clone();
    let events = daemon.clone();
    let mut pull = tokio::spawn(async move {
        let result = images.pull(&pulled, sender).await;
        if result.is_ok() {
            events.image_event("pull", &pulled.familiar(), &pulled.familiar_repository());
        }
        result
    });

    let first = tokio::select! {
        step = progress.recv() => step,
        result = &mut pull => {
            let result = result.map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?;
            result?;
            progress.recv().await
        }
    };

    let (lines, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        if let Some(step) = first {
            let _ = lines.send(Ok(progress_line(&step))).await;
        }
        while let Some(step) = progress.recv().await {
            let _ = lines.send(Ok(progress_line(&step))).await;
        }
        match pull.await {
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(error)) => {
                tracing::warn!(reference = %reference, %error, "pull failed");
                let _ = lines.send(Ok(error_line(&error))).await;
            }
        }
    });
    Ok(streaming("application/json", Body::from_stream(ReceiverStream::new(body))))
}

pub async fn list(
    State(daemon): State<AppState>,
    Query(query): Query<query::Query>,
) -> ApiResult<Json<Value>> {
    let filters = query::filters(&query)?;
    let images = daemon.images.list();
    let summaries = images
        .iter()
        .filter(|image| image_matches(image, &filters))
        .map(|image| {
            let containers = daemon.containers_using_image(&image.id).len();
            render::image_summary(image, containers)
        })
        .collect();
    Ok(Json(Value::Array(summaries)))
}

/// Applies the `reference`, `dangling` and `label` filters of
/// `GET /images/json`. A reference pattern without a tag matches the
/// repository alone; `*` matches any run of characters.
fn image_matches(
    image: &sidewhale_core::ImageRecord,
    filters: &std::collections::HashMap<String, Vec<String>>,
) -> bool {
    let labels = image.config.labels.clone().unwrap_or_default();
    filters.iter().all(|(key, values)| match key.as_str() {
        "reference" => values.iter().any(|pattern| {
            image.repo_tags.iter().any(|tag| {
                let repository = tag.rsplit_once(':').map_or(tag.as_str(), |(name, _)| name);
                sidewhale_config::glob_matches(pattern, tag)
                    || sidewhale_config::glob_matches(pattern, repository)
            })
        }),
        "dangling" => values.iter().any(|value| (value == "true") == image.repo_tags.is_empty()),
        "label" => values.iter().all(|wanted| match wanted.split_once('=') {
            Some((key, value)) => labels.get(key).is_some_and(|actual| actual == value),
            None => labels.contains_key(wanted),
        }),
        _ => true,
    })
}

fn no_such_image(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("No such image: {name}"))
}

/// Serves `GET /images/{name}/json` and `GET /images/{name}/history`,
/// where the name itself may contain slashes.
pub async fn get_by_suffix(
    State(daemon): State<AppState>,
    Path(path): Path<String>,
) -> ApiResult<Json<Value>> {
    if let Some(name) = path.strip_suffix("/json") {
        let image = daemon
            .images
            .get(name)
            .or_else(|| ryuk::is_ryuk_image(name).then(|| ryuk::image_record(name)))
            .ok_or_else(|| no_such_image(name))?;
        return Ok(Json(render::image_inspect(&image)));
    }
    if let Some(name) = path.strip_suffix("/history") {
        let image = daemon.images.get(name).ok_or_else(|| no_such_image(name))?;
        return Ok(Json(render::image_history(&image)));
    }
    Err(ApiError::new(StatusCode::NOT_FOUND, "page not found"))
}

/// Serves `POST /images/{name}/tag?repo=&tag=`.
pub async fn post_by_suffix(
    State(daemon): State<AppState>,
    Path(path): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<StatusCode> {
    let Some(name) = path.strip_suffix("/tag") else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "page not found"));
    };
    let repo = query.get("repo").filter(|repo| !repo.is_empty()).ok_or_else(|| {
        ApiError::bad_request("repo is required")
    })?;
    let text = match query.get("tag").map(String::as_str) {
        None | Some("") => repo.clone(),
        Some(tag) if sidewhale_core::image::is_valid_tag(tag) => format!("{repo}:{tag}"),
        Some(tag) => return Err(ApiError::bad_request(format!("invalid tag format: {tag:?}"))),
    };
    let target = Reference::parse(&text).map_err(|error| ApiError::bad_request(error.to_string()))?;
    let image = daemon.images.get(name).ok_or_else(|| no_such_image(name))?;
    daemon.images.tag(name, &target.to_string())?;
    daemon.image_event("tag", &image.id, &target.familiar());
    Ok(StatusCode::CREATED)
}

/// Serves `DELETE /images/{name}`: untags, and deletes the image once no
/// tag is left, refusing while a container uses it unless `force`.
pub async fn remove(
    State(daemon): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<impl IntoResponse> {
    let image = daemon.images.get(&name).ok_or_else(|| no_such_image(&name))?;
    let force = flag(&query, "force");
    let users = daemon.containers_using_image(&image.id);
    let short_id = image.id.trim_start_matches("sha256:").chars().take(12).collect::<String>();
    if let Some(running) = users.iter().find(|record| record.state.running()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "conflict: unable to delete {short_id} (cannot be forced) - image is being used by running container {}",
                running.short_id()
            ),
        ));
    }
    let deletes_image = image.repo_tags.len() <= 1 || !name.contains(':');
    if let (Some(user), false, true) = (users.first(), force, deletes_image) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {short_id}",
                user.short_id()
            ),
        ));
    }
    let removed = daemon.images.remove(&name, force)?;
    daemon.image_removal_events(&image.id, &removed);
    let body: Vec<Value> = removed
        .into_iter()
        .map(|item| match item {
            sidewhale_images::RemoveEvent::Untagged(name) => json!({"Untagged": name}),
            sidewhale_images::RemoveEvent::Deleted(id) => json!({"Deleted": id}),
        })
        .collect();
    Ok(Json(Value::Array(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_reference_combines_tag() {
        let query = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<query::Query>()
        };
        let reference = pull_reference(&query(&[("fromImage", "redis"), ("tag", "7")])).unwrap();
        assert_eq!(reference.to_string(), "docker.io/library/redis:7");
        let digest = format!("sha256:{}", "b".repeat(64));
        let reference = pull_reference(&query(&[("fromImage", "redis"), ("tag", &digest)])).unwrap();
        assert_eq!(reference.digest.as_deref(), Some(digest.as_str()));
        assert!(pull_reference(&query(&[])).is_err());
    }

    #[test]
    fn progress_line_shape() {
        let step = PullProgress {
            id: Some("abc".into()),
            status: "Downloading".into(),
            current: Some(5),
            total: Some(10),
        };
        let line: Value = serde_json::from_slice(&progress_line(&step)).unwrap();
        assert_eq!(line["progressDetail"]["current"], 5);
        assert_eq!(line["progressDetail"]["total"], 10);
        assert_eq!(line["id"], "abc");
        let line: Value = serde_json::from_slice(&progress_line(&PullProgress::status("Digest: x"))).unwrap();
        assert!(line.get("progressDetail").is_none());
    }

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_234_567), "1.235MB");
        assert_eq!(human_size(50_000_000), "50MB");
    }
}

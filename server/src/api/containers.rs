//! `/containers/...` endpoints.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::query::{self, flag, integer};
use super::render;
use super::{parse_body, streaming, ApiResult, AppState};
use crate::runtime::model::CreateRequest;
use crate::runtime::WaitCondition;

pub async fn create(
    State(daemon): State<AppState>,
    Query(query): Query<query::Query>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let request: CreateRequest = parse_body(&body)?;
    let id = daemon.create_container(query.get("name").map(String::as_str), request).await?;
    Ok((StatusCode::CREATED, Json(json!({"Id": id, "Warnings": []}))))
}

pub async fn list(
    State(daemon): State<AppState>,
    Query(query): Query<query::Query>,
) -> ApiResult<Json<Value>> {
    let all = flag(&query, "all");
    let limit = integer(&query, "limit")?.filter(|limit| *limit > 0);
    let filters = query::filters(&query)?;
    let mut summaries = Vec::new();
    for container in daemon.containers() {
        let record = container.record();
        let status = record.state.status.as_str();
        let status_filtered = filters.contains_key("status");
        if !all && !status_filtered && status != "running" {
            continue;
        }
        if !matches_filters(&record, &filters) {
            continue;
        }
        summaries.push(render::container_summary(&record));
        if limit.is_some_and(|limit| summaries.len() as i64 >= limit) {
            break;
        }
    }
    Ok(Json(Value::Array(summaries)))
}

/// Applies Docker's `label`, `name`, `id` and `status` filters. Values of
/// one key are alternatives, except `label`, where every value must match.
fn matches_filters(
    record: &crate::runtime::model::ContainerRecord,
    filters: &HashMap<String, Vec<String>>,
) -> bool {
    let labels = record.config.labels.clone().unwrap_or_default();
    filters.iter().all(|(key, values)| match key.as_str() {
        "label" => values.iter().all(|wanted| match wanted.split_once('=') {
            Some((key, value)) => labels.get(key).is_some_and(|actual| actual == value),
            None => labels.contains_key(wanted),
        }),
        "name" => values.iter().any(|name| {
            record.name.contains(name.strip_prefix('/').unwrap_or(name))
        }),
        "id" => values.iter().any(|id| record.id.starts_with(id.as_str())),
        "status" => values.iter().any(|status| status == record.state.status_name()),
        "health" => {
            let health = record.state.health.as_ref().map_or("none", |h| h.status.as_str());
            values.iter().any(|wanted| wanted == health)
        }
        "ancestor" => values.iter().any(|image| *image == record.image || *image == record.image_id),
        _ => true,
    })
}

pub async fn inspect(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let container = daemon.container(&id)?;
    let record = container.record();
    let rootfs = container.rootfs().display().to_string();
    let log_path = container.logs.path().display().to_string();
    Ok(Json(render::container_inspect(&record, &rootfs, &log_path)))
}

pub async fn start(State(daemon): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let container = daemon.container(&id)?;
    daemon.start_container(&container).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn stop(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<StatusCode> {
    let container = daemon.container(&id)?;
    let timeout = integer(&query, "t")?;
    daemon.stop_container(&container, timeout, query.get("signal").map(String::as_str)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn restart(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<StatusCode> {
    let container = daemon.container(&id)?;
    let timeout = integer(&query, "t")?;
    match daemon.stop_container(&container, timeout, query.get("signal").map(String::as_str)).await {
        Ok(()) | Err(crate::runtime::Error::NotModified) => {}
        Err(error) => return Err(error.into()),
    }
    daemon.start_container(&container).await?;
    // Docker follows the stop and start events with `restart`.
    daemon.container_event(&container.record(), "restart", &[]);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn kill(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<StatusCode> {
    let container = daemon.container(&id)?;
    daemon.kill_container(&container, query.get("signal").map(String::as_str)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<StatusCode> {
    let container = daemon.container(&id)?;
    daemon.remove_container(&container, flag(&query, "force")).await?;
    if flag(&query, "v") {
        daemon.remove_anonymous_volumes(&container.record());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Sends the headers at once, so that a client can start the container
/// after posting the wait, and the body at the exit.
pub async fn wait(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<Response> {
    let container = daemon.container(&id)?;
    let condition = WaitCondition::parse(query.get("condition").map(String::as_str))?;
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        let exit_code = daemon.wait_container(&container, condition).await;
        let body = json!({"StatusCode": exit_code});
        let _ = sender.send(Ok(Bytes::from(format!("{body}\n")))).await;
    });
    Ok(streaming("application/json", Body::from_stream(ReceiverStream::new(receiver))))
}

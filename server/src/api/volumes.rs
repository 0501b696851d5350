//! `/volumes/...` endpoints.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::SecondsFormat;
use serde_json::{json, Value};

use super::query::{self, flag};
use super::{parse_body, ApiError, ApiResult, AppState};
use crate::runtime::volumes::{label_matches, CreateVolumeRequest, PruneFilter, VolumeRecord};

/// Renders Docker's `Volume` object.
fn render(volume: &VolumeRecord, mountpoint: &std::path::Path) -> Value {
    json!({
        "CreatedAt": volume.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "Driver": volume.driver,
        "Labels": volume.labels,
        "Mountpoint": mountpoint,
        "Name": volume.name,
        "Options": volume.options,
        "Scope": "local",
    })
}

fn render_volume(daemon: &AppState, volume: &VolumeRecord) -> Value {
    render(volume, &daemon.volumes.mountpoint(&volume.name))
}

pub async fn create(State(daemon): State<AppState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let request: CreateVolumeRequest = parse_body(&body)?;
    let volume = daemon.create_volume(request)?;
    Ok((StatusCode::CREATED, Json(render_volume(&daemon, &volume))))
}

pub async fn inspect(
    State(daemon): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let volume = daemon.volume(&name)?;
    Ok(Json(render_volume(&daemon, &volume)))
}

pub async fn remove(
    State(daemon): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<StatusCode> {
    daemon.remove_volume(&name, flag(&query, "force"))?;
    Ok(StatusCode::NO_CONTENT)
}

fn check_filter_keys(filters: &HashMap<String, Vec<String>>, allowed: &[&str]) -> ApiResult<()> {
    match filters.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) => Err(ApiError::bad_request(format!("invalid filter '{key}'"))),
        None => Ok(()),
    }
}

/// Parses a boolean filter value as Docker does: `true`/`1` or
/// `false`/`0`.
fn filter_bool(key: &str, value: &str) -> ApiResult<bool> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "invalid filter '{key}={value}'"
        ))),
    }
}

/// `GET /volumes`, with the filters `name` (substring), `label`,
/// `dangling` and `driver`.
pub async fn list(
    State(daemon): State<AppState>,
    Query(query): Query<query::Query>,
) -> ApiResult<Json<Value>> {
    let filters = query::filters(&query)?;
    check_filter_keys(&filters, &["name", "label", "dangling", "driver"])?;
    let dangling = match filters.get("dangling").and_then(|values| values.first()) {
        Some(value) => Some(filter_bool("dangling", value)?),
        None => None,
    };
    let mut volumes = Vec::new();
    for volume in daemon.volumes.list() {
        let matches = filters.iter().all(|(key, values)| match key.as_str() {
            // NOTE: Docker matches `name` as a regular expression; a
            // substring match covers plain names.
            "name" => values
                .iter()
                .any(|name| volume.name.contains(name.as_str())),
            "driver" => values.contains(&volume.driver),
            "label" => values
                .iter()
                .all(|label| label_matches(&volume.labels, label)),
            _ => true,
        });
        if !matches {
            continue;
        }
        if let Some(dangling) = dangling {
            if daemon.volume_users(&volume.name).is_empty() != dangling {
                continue;
            }
        }
        volumes.push(render_volume(&daemon, &volume));
    }
    Ok(Json(json!({"Volumes": volumes, "Warnings": []})))
}

/// `POST /volumes/prune`: removes unused anonymous volumes, or every
/// unused volume with the filter `all=true`, as Docker 23 and later do.
pub async fn prune(
    State(daemon): State<AppState>,
    Query(query): Query<query::Query>,
) -> ApiResult<Json<Value>> {
    let filters = query::filters(&query)?;
    check_filter_keys(&filters, &["label", "label!", "all"])?;
    let mut filter = PruneFilter {
        labels: filters.get("label").cloned().unwrap_or_default(),
        not_labels: filters.get("label!").cloned().unwrap_or_default(),
        ..PruneFilter::default()
    };
    for value in filters.get("all").into_iter().flatten() {
        filter.all |= filter_bool("all", value)?;
    }
    let report = daemon.prune_volumes(&filter);
    daemon.prune_event("volume", report.space_reclaimed);
    tracing::info!(
        deleted = report.deleted.len(),
        space_reclaimed = report.space_reclaimed,
        "pruned volumes"
    );
    // Docker sends `null` rather than an empty list.
    let deleted = if report.deleted.is_empty() {
        Value::Null
    } else {
        json!(report.deleted)
    };
    Ok(Json(
        json!({"VolumesDeleted": deleted, "SpaceReclaimed": report.space_reclaimed}),
    ))
}

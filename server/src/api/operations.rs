//! Container rename, pause, unpause and resize, and the prunes of
//! containers and images.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::events::parse_timestamp;
use super::query::{self, integer};
use super::{ApiError, ApiResult, AppState};
use crate::runtime::prune::PruneFilter;

pub async fn rename(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<StatusCode> {
    let container = daemon.container(&id)?;
    let name = query.get("name").map(String::as_str).unwrap_or_default();
    daemon.rename_container(&container, name)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn pause(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let container = daemon.container(&id)?;
    daemon.pause_container(&container).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn unpause(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let container = daemon.container(&id)?;
    daemon.unpause_container(&container).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Serves `POST /containers/{id}/resize?h=&w=`.
pub async fn resize(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<StatusCode> {
    let container = daemon.container(&id)?;
    let size = |key: &str| -> ApiResult<u16> {
        let value = integer(&query, key)?.unwrap_or(0);
        u16::try_from(value)
            .map_err(|_| ApiError::bad_request(format!("invalid terminal size: {key}={value}")))
    };
    daemon.resize_container(&container, size("h")?, size("w")?)?;
    Ok(StatusCode::OK)
}

/// Parses a Go duration such as `24h`, `1h30m` or `90s`.
fn parse_duration(text: &str) -> Option<chrono::Duration> {
    let mut total = chrono::Duration::zero();
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_length = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_length] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return None,
        };
        rest = &rest[unit_length..];
        total += chrono::Duration::nanoseconds((number * nanos_per_unit) as i64);
    }
    Some(total)
}

/// Parses the `until` filter: a timestamp, or a duration before now.
fn parse_until(text: &str) -> ApiResult<DateTime<Utc>> {
    if let Some(duration) = parse_duration(text) {
        return Ok(Utc::now() - duration);
    }
    let nanos = parse_timestamp("until", text)?;
    Ok(DateTime::from_timestamp_nanos(nanos))
}

/// Builds the filter of a prune and rejects keys outside `allowed`.
fn prune_filter(
    filters: &HashMap<String, Vec<String>>,
    allowed: &[&str],
) -> ApiResult<PruneFilter> {
    if let Some(key) = filters.keys().find(|key| !allowed.contains(&key.as_str())) {
        return Err(ApiError::bad_request(format!("invalid filter '{key}'")));
    }
    let until = match filters.get("until").map(Vec::as_slice) {
        None | Some([]) => None,
        Some([text]) => Some(parse_until(text)?),
        Some(_) => {
            return Err(ApiError::bad_request(
                "more than one until filter specified",
            ));
        }
    };
    Ok(PruneFilter {
        until,
        labels: filters.get("label").cloned().unwrap_or_default(),
        not_labels: filters.get("label!").cloned().unwrap_or_default(),
    })
}

/// Docker sends `null` rather than an empty list of deleted objects.
fn list_or_null<T: serde::Serialize>(items: &[T]) -> Value {
    if items.is_empty() {
        Value::Null
    } else {
        json!(items)
    }
}

/// Serves `POST /containers/prune`: removes every container that is not
/// running, filtered by `until`, `label` and `label!`.
pub async fn prune_containers(
    State(daemon): State<AppState>,
    Query(query): Query<query::Query>,
) -> ApiResult<Json<Value>> {
    let filters = query::filters(&query)?;
    let filter = prune_filter(&filters, &["until", "label", "label!"])?;
    let report = daemon.prune_containers(&filter).await;
    daemon.prune_event("container", report.space_reclaimed);
    Ok(Json(json!({
        "ContainersDeleted": list_or_null(&report.deleted),
        "SpaceReclaimed": report.space_reclaimed,
    })))
}

/// Serves `POST /images/prune`: deletes unused untagged images, or every
/// unused image with the filter `dangling=false`.
pub async fn prune_images(
    State(daemon): State<AppState>,
    Query(query): Query<query::Query>,
) -> ApiResult<Json<Value>> {
    let filters = query::filters(&query)?;
    let filter = prune_filter(&filters, &["dangling", "until", "label", "label!"])?;
    let dangling_only = match filters.get("dangling").and_then(|values| values.first()) {
        None => true,
        Some(value) => match value.as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid filter 'dangling={value}'"
                )))
            }
        },
    };
    let report = daemon.prune_images(dangling_only, &filter)?;
    daemon.prune_event("image", report.space_reclaimed);
    let deleted: Vec<Value> = report
        .deleted
        .iter()
        .map(|event| match event {
            sidewhale_images::RemoveEvent::Untagged(name) => json!({"Untagged": name}),
            sidewhale_images::RemoveEvent::Deleted(id) => json!({"Deleted": id}),
        })
        .collect();
    Ok(Json(json!({
        "ImagesDeleted": list_or_null(&deleted),
        "SpaceReclaimed": report.space_reclaimed,
    })))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("24h").unwrap().num_hours(), 24);
        assert_eq!(parse_duration("1h30m").unwrap().num_minutes(), 90);
        assert_eq!(parse_duration("1.5s").unwrap().num_milliseconds(), 1500);
        assert!(parse_duration("1700000000").is_none());
        assert!(parse_duration("").is_none());
        assert!(parse_duration("5x").is_none());
    }
}

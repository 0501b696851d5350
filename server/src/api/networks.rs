//! `/networks/...` endpoints: Docker's built-in networks and user-defined
//! ones, with their endpoints.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::query;
use super::{parse_body, ApiError, ApiResult, AppState};
use crate::runtime::model::ContainerRecord;
use crate::runtime::networks::{endpoint_of, CreateNetworkRequest, EndpointRequest, NetworkRecord};
use crate::runtime::ryuk::parse_go_duration;
use crate::runtime::Daemon;

/// The body of `POST /networks/{id}/connect`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ConnectRequest {
    container: Option<String>,
    endpoint_config: Option<EndpointRequest>,
}

/// The body of `POST /networks/{id}/disconnect`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct DisconnectRequest {
    container: Option<String>,
    force: Option<bool>,
}

/// Returns the running containers with an endpoint on the network, which
/// Docker lists as the network's `Containers`.
fn active_members(daemon: &Daemon, network: &NetworkRecord) -> Vec<ContainerRecord> {
    daemon
        .network_members(network)
        .into_iter()
        .filter(|record| record.state.running())
        .collect()
}

/// Renders a network as `GET /networks/{id}` does; `members` fills its
/// `Containers`, which `GET /networks` leaves empty as Docker does.
fn render(network: &NetworkRecord, members: &[ContainerRecord]) -> Value {
    let config: Vec<Value> = network
        .subnet_and_gateway()
        .map(|(subnet, gateway)| json!({"Subnet": subnet, "Gateway": gateway}))
        .into_iter()
        .collect();
    let mut containers = Map::new();
    for record in members {
        let Some(endpoint) =
            endpoint_of(record, network).and_then(|name| record.networks.get(&name).cloned())
        else {
            continue;
        };
        let address = match endpoint.ip_address {
            Some(ip) => format!("{ip}/{}", endpoint.prefix_len()),
            None => "127.0.0.1/8".to_string(),
        };
        containers.insert(
            record.id.clone(),
            json!({
                "Name": record.name,
                "EndpointID": endpoint.endpoint_id,
                "MacAddress": endpoint.mac_address(),
                "IPv4Address": address,
                "IPv6Address": "",
            }),
        );
    }
    let created = if network.built_in {
        "0001-01-01T00:00:00Z".to_string()
    } else {
        network.created.to_rfc3339_opts(SecondsFormat::Nanos, true)
    };
    json!({
        "Name": network.name,
        "Id": network.id,
        "Created": created,
        "Scope": "local",
        "Driver": network.driver,
        "EnableIPv4": true,
        "EnableIPv6": network.enable_ipv6,
        "IPAM": {"Driver": "default", "Options": {}, "Config": config},
        "Internal": network.internal,
        "Attachable": network.attachable,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": network.options,
        "Labels": network.labels,
    })
}

/// Returns whether labels match a `KEY` or `KEY=VALUE` filter.
fn label_matches(labels: &BTreeMap<String, String>, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((key, value)) => labels.get(key).is_some_and(|actual| actual == value),
        None => labels.contains_key(filter),
    }
}

fn invalid_filter(key: &str) -> ApiError {
    ApiError::bad_request(format!("invalid filter '{key}'"))
}

/// Applies the filters of `GET /networks`. Values of one key are
/// alternatives, except `label`, where every value must match.
fn list_matches(
    daemon: &Daemon,
    network: &NetworkRecord,
    filters: &HashMap<String, Vec<String>>,
) -> ApiResult<bool> {
    for (key, values) in filters {
        let matched = match key.as_str() {
            "name" => values
                .iter()
                .any(|value| network.name.contains(value.as_str())),
            "id" => values
                .iter()
                .any(|value| network.id.contains(value.as_str())),
            "driver" => values.contains(&network.driver),
            "label" => values
                .iter()
                .all(|value| label_matches(&network.labels, value)),
            "scope" => values.iter().any(|value| value == "local"),
            "type" => {
                let mut matched = false;
                for value in values {
                    matched |= match value.as_str() {
                        "custom" => !network.built_in,
                        "builtin" => network.built_in,
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "invalid filter: 'type'='{value}'"
                            )))
                        }
                    };
                }
                matched
            }
            "dangling" => {
                let mut matched = false;
                for value in values {
                    let dangling = match value.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(invalid_filter(&format!("dangling={value}"))),
                    };
                    let unused = !network.built_in && active_members(daemon, network).is_empty();
                    matched |= unused == dangling;
                }
                matched
            }
            _ => return Err(invalid_filter(key)),
        };
        if !matched {
            return Ok(false);
        }
    }
    Ok(true)
}

pub async fn list(
    State(daemon): State<AppState>,
    Query(query): Query<query::Query>,
) -> ApiResult<Json<Value>> {
    let filters = query::filters(&query)?;
    let mut networks = Vec::new();
    for network in daemon.networks() {
        if list_matches(&daemon, &network, &filters)? {
            networks.push(render(&network, &[]));
        }
    }
    Ok(Json(Value::Array(networks)))
}

pub async fn inspect(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let network = daemon.network(&id)?;
    let members = active_members(&daemon, &network);
    Ok(Json(render(&network, &members)))
}

pub async fn create(State(daemon): State<AppState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let request: CreateNetworkRequest = parse_body(&body)?;
    let network = daemon.create_network(request)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"Id": network.id, "Warning": ""})),
    ))
}

pub async fn remove(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    daemon.remove_network(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn connect(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let request: ConnectRequest = parse_body(&body)?;
    let container = daemon.container(request.container.as_deref().unwrap_or_default())?;
    daemon
        .connect_network(&id, &container, request.endpoint_config.unwrap_or_default())
        .await?;
    Ok(StatusCode::OK)
}

pub async fn disconnect(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let request: DisconnectRequest = parse_body(&body)?;
    let container = daemon.container(request.container.as_deref().unwrap_or_default())?;
    tracing::debug!(container = %container.id, force = request.force.unwrap_or(false), "disconnect requested");
    daemon.disconnect_network(&id, &container).await?;
    Ok(StatusCode::OK)
}

/// Parses the `until` filter as Docker does: a Unix time in seconds, with
/// an optional fraction, an RFC 3339 time, or a Go duration before now.
fn parse_until(text: &str) -> ApiResult<DateTime<Utc>> {
    if let Ok(seconds) = text.parse::<f64>() {
        let nanos = (seconds * 1e9) as i64;
        return Ok(DateTime::from_timestamp_nanos(nanos));
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Some(duration) = parse_go_duration(text) {
        let duration = chrono::Duration::from_std(duration)
            .map_err(|_| ApiError::bad_request(format!("invalid until filter: {text}")))?;
        return Ok(Utc::now() - duration);
    }
    Err(ApiError::bad_request(format!(
        "invalid until filter: {text}: expected a Unix time, an RFC 3339 time or a duration"
    )))
}

pub async fn prune(
    State(daemon): State<AppState>,
    Query(query): Query<query::Query>,
) -> ApiResult<Json<Value>> {
    let filters = query::filters(&query)?;
    if let Some(key) = filters
        .keys()
        .find(|key| !matches!(key.as_str(), "label" | "label!" | "until"))
    {
        return Err(invalid_filter(key));
    }
    let until = match filters.get("until").and_then(|values| values.last()) {
        Some(text) => Some(parse_until(text)?),
        None => None,
    };
    let labels = filters.get("label").cloned().unwrap_or_default();
    let not_labels = filters.get("label!").cloned().unwrap_or_default();
    let deleted = daemon.prune_networks(|network| {
        labels
            .iter()
            .all(|filter| label_matches(&network.labels, filter))
            && !not_labels
                .iter()
                .any(|filter| label_matches(&network.labels, filter))
            && until.is_none_or(|until| network.created < until)
    });
    // Networks hold no disk space; Docker reports 0.
    daemon.prune_event("network", 0);
    Ok(Json(json!({"NetworksDeleted": deleted})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_parses_docker_forms() {
        let time = parse_until("1700000000").unwrap();
        assert_eq!(time.timestamp(), 1_700_000_000);
        let time = parse_until("2024-01-02T03:04:05Z").unwrap();
        assert_eq!(time.timestamp(), 1_704_164_645);
        let time = parse_until("10m").unwrap();
        assert!((Utc::now() - time).num_seconds() >= 599);
        assert!(parse_until("yesterday").is_err());
    }

    #[test]
    fn labels_filter() {
        let labels =
            BTreeMap::from([("org.testcontainers.sessionId".to_string(), "x".to_string())]);
        assert!(label_matches(&labels, "org.testcontainers.sessionId"));
        assert!(label_matches(&labels, "org.testcontainers.sessionId=x"));
        assert!(!label_matches(&labels, "org.testcontainers.sessionId=y"));
    }
}

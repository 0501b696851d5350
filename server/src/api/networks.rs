//! `GET /networks` and `GET /networks/{id}`: the built-in networks.
//!
//! Containers share the host's network, so sidewhale has exactly Docker's
//! three built-in networks and no user-defined ones.

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::query;
use super::{ApiError, ApiResult};

const BUILT_IN: [(&str, &str); 3] = [("bridge", "bridge"), ("host", "host"), ("none", "null")];

fn network(name: &str, driver: &str) -> Value {
    let config = if name == "bridge" {
        json!([{"Subnet": "127.0.0.0/8", "Gateway": "127.0.0.1"}])
    } else {
        json!([])
    };
    json!({
        "Name": name,
        "Id": name,
        "Created": "0001-01-01T00:00:00Z",
        "Scope": "local",
        "Driver": driver,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": config},
        "Internal": false,
        "Attachable": false,
        "Ingress": false,
        "ConfigOnly": false,
        "Containers": {},
        "Options": {},
        "Labels": {},
    })
}

pub async fn list(Query(query): Query<query::Query>) -> ApiResult<Json<Value>> {
    let filters = query::filters(&query)?;
    let matches = |name: &str| {
        filters.iter().all(|(key, values)| match key.as_str() {
            "type" => values.iter().any(|kind| kind == "builtin"),
            "name" | "id" => values.iter().any(|value| name.contains(value.as_str())),
            "driver" => values.iter().any(|value| value == name),
            // Built-in networks carry no labels, so a label filter
            // matches none of them.
            "label" => false,
            _ => true,
        })
    };
    let networks = BUILT_IN
        .iter()
        .filter(|(name, _)| matches(name))
        .map(|(name, driver)| network(name, driver))
        .collect();
    Ok(Json(Value::Array(networks)))
}

pub async fn inspect(Path(id): Path<String>) -> ApiResult<Json<Value>> {
    BUILT_IN
        .iter()
        .find(|(name, _)| *name == id)
        .map(|(name, driver)| Json(network(name, driver)))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("network {id} not found")))
}

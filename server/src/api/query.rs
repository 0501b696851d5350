//! Query-string helpers with Docker's conventions.

use std::collections::HashMap;

use serde::de::DeserializeOwned;

use super::{ApiError, ApiResult};

pub type Query = HashMap<String, String>;

/// Reads a boolean the way Docker does: `1`, `true` and `True` are true,
/// and anything else, or a missing key, is false.
pub fn flag(query: &Query, key: &str) -> bool {
    matches!(query.get(key).map(String::as_str), Some("1" | "true" | "True" | "TRUE"))
}

/// Reads an optional integer, rejecting text that is not one.
pub fn integer(query: &Query, key: &str) -> ApiResult<Option<i64>> {
    match query.get(key).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("invalid value for {key}: {text:?} is not an integer"))
        }),
    }
}

/// Reads a JSON-encoded query value such as `filters`.
pub fn json<T: DeserializeOwned + Default>(query: &Query, key: &str) -> ApiResult<T> {
    match query.get(key).map(String::as_str) {
        None | Some("") => Ok(T::default()),
        Some(text) => serde_json::from_str(text)
            .map_err(|error| ApiError::bad_request(format!("invalid {key}: {error}"))),
    }
}

/// Docker's `filters`: each key maps to a list of values. Old clients send
/// `{"key": {"value": true}}`, which is accepted too.
pub fn filters(query: &Query) -> ApiResult<HashMap<String, Vec<String>>> {
    let raw: HashMap<String, serde_json::Value> = json(query, "filters")?;
    let mut filters = HashMap::new();
    for (key, value) in raw {
        let values = match value {
            serde_json::Value::Array(items) => {
                items.into_iter().filter_map(|item| item.as_str().map(str::to_string)).collect()
            }
            serde_json::Value::Object(map) => map.into_iter().map(|(value, _)| value).collect(),
            serde_json::Value::String(text) => vec![text],
            _ => return Err(ApiError::bad_request(format!("invalid filter {key}"))),
        };
        filters.insert(key, values);
    }
    Ok(filters)
}

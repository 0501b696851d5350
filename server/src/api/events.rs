//! `GET /events`: recent events replayed, then live ones, as JSON lines.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::Response;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::query;
use super::{streaming, ApiError, ApiResult, AppState};
use crate::runtime::events::{Event, EventFilter};

/// Parses a `since` or `until` value into nanoseconds since the epoch.
/// Docker accepts Unix seconds with an optional fraction of up to nine
/// digits (`1700000000.5`), which the docker CLI sends, and RFC 3339 times.
pub fn parse_timestamp(key: &str, text: &str) -> ApiResult<i64> {
    let invalid = || {
        ApiError::bad_request(format!(
            "invalid value for {key}: {text:?} is not a timestamp"
        ))
    };
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return time.timestamp_nanos_opt().ok_or_else(invalid);
    }
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    let seconds: i64 = seconds.parse().map_err(|_| invalid())?;
    if fraction.len() > 9 || !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    let nanos: i64 = format!("{fraction:0<9}").parse().map_err(|_| invalid())?;
    seconds
        .checked_mul(1_000_000_000)
        .and_then(|value| value.checked_add(nanos))
        .ok_or_else(invalid)
}

fn line(event: &Event) -> Bytes {
    Bytes::from(format!("{}\n", event.to_json()))
}

pub async fn events(
    State(daemon): State<AppState>,
    Query(query): Query<query::Query>,
) -> ApiResult<Response> {
    let since = match query.get("since").filter(|text| !text.is_empty()) {
        Some(text) => Some(parse_timestamp("since", text)?),
        None => None,
    };
    let until = match query.get("until").filter(|text| !text.is_empty()) {
        Some(text) => Some(parse_timestamp("until", text)?),
        None => None,
    };
    let filter = EventFilter::new(query::filters(&query)?);
    let (history, mut live) = daemon.events.subscribe();
    let (sender, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tracing::debug!(?since, ?until, "streaming events");

    tokio::spawn(async move {
        // Docker replays its history only when the request bounds it.
        if since.is_some() || until.is_some() {
            let replayed = history.iter().filter(|event| {
                since.is_none_or(|since| event.time_nano >= since)
                    && until.is_none_or(|until| event.time_nano <= until)
                    && filter.matches(event)
            });
            for event in replayed {
                if sender.send(Ok(line(event))).await.is_err() {
                    return;
                }
            }
        }
        let deadline = until.map(|until| {
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
            let wait = u64::try_from(until.saturating_sub(now)).unwrap_or(0);
            tokio::time::Instant::now() + Duration::from_nanos(wait)
        });
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                () = sender.closed() => return,
                () = sleep_until(deadline) => return,
            };
            let event = match received {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "events subscriber fell behind and missed events");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if until.is_some_and(|until| event.time_nano > until) {
                return;
            }
            if filter.matches(&event) && sender.send(Ok(line(&event))).await.is_err() {
                return;
            }
        }
    });
    Ok(streaming(
        "application/json",
        Body::from_stream(ReceiverStream::new(body)),
    ))
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_timestamp;

    #[test]
    fn timestamps_parse_like_docker() {
        assert_eq!(parse_timestamp("since", "10").unwrap(), 10_000_000_000);
        assert_eq!(parse_timestamp("since", "10.5").unwrap(), 10_500_000_000);
        assert_eq!(
            parse_timestamp("since", "1700000000.000000001").unwrap(),
            1_700_000_000_000_000_001
        );
        assert_eq!(
            parse_timestamp("since", "1970-01-01T00:00:02Z").unwrap(),
            2_000_000_000
        );
        assert!(parse_timestamp("since", "soon").is_err());
        assert!(parse_timestamp("since", "1.1234567890").is_err());
    }
}

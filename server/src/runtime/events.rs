//! Docker's event log: what `GET /events` streams and replays.
//!
//! Events go to every live subscriber through a broadcast channel and into
//! a bounded history, so that a client asking for `since` a past time gets
//! the recent ones replayed first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use sidewhale_images::RemoveEvent;

use super::model::ContainerRecord;
use super::Daemon;

/// The number of past events kept for replay. Older events are dropped,
/// so `since` cannot reach further back than this.
const HISTORY_SIZE: usize = 1024;

/// How many events a subscriber may fall behind before it misses some.
const CHANNEL_SIZE: usize = 256;

/// One event, as Docker's `events.Message` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `container`, `image`, `volume` or `network`.
    pub kind: &'static str,
    /// `start`, `die`, `exec_create: sh -c date`, `health_status: healthy`.
    pub action: String,
    /// The container id, the image id, for `pull` the image reference,
    /// and empty for `prune`.
    pub actor_id: String,
    pub attributes: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    pub time_nano: i64,
}

impl Event {
    /// Renders the event as one line of `GET /events`, with the legacy
    /// `status`, `id` and (for containers) `from` fields, which clients of
    /// API 1.47 may still read. Docker fills them for container and image
    /// events only, and leaves out an empty `id`.
    pub fn to_json(&self) -> Value {
        let mut object = json!({
            "Type": self.kind,
            "Action": self.action,
            "Actor": {"ID": self.actor_id, "Attributes": self.attributes},
            "scope": "local",
            "time": self.time_nano.div_euclid(1_000_000_000),
            "timeNano": self.time_nano,
        });
        if self.kind != "container" && self.kind != "image" {
            return object;
        }
        object["status"] = json!(self.action);
        if !self.actor_id.is_empty() {
            object["id"] = json!(self.actor_id);
        }
        if self.kind == "container" {
            if let Some(image) = self.attributes.get("image") {
                object["from"] = json!(image);
            }
        }
        object
    }
}

/// The filters of `GET /events`, keyed as Docker keys them.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    filters: HashMap<String, Vec<String>>,
}

impl EventFilter {
    pub fn new(filters: HashMap<String, Vec<String>>) -> EventFilter {
        EventFilter { filters }
    }

    /// Returns whether the event passes every filter key. Values of one
    /// key are alternatives, except `label`, where every value must match.
    pub fn matches(&self, event: &Event) -> bool {
        self.filters.iter().all(|(key, values)| {
            values.is_empty()
                || match key.as_str() {
                    "type" => values.iter().any(|value| value == event.kind),
                    "event" => values
                        .iter()
                        .any(|value| action_matches(value, &event.action)),
                    "container" => {
                        event.kind == "container"
                            && values.iter().any(|value| name_matches(value, event))
                    }
                    "image" => values.iter().any(|value| image_matches(value, event)),
                    "label" => values.iter().all(|value| label_matches(value, event)),
                    "scope" => values.iter().any(|value| value == "local"),
                    _ => true,
                }
        })
    }
}

/// Matches the `event` filter. Actions such as `exec_start: sh -c date`
/// and `health_status: healthy` also match their name before the colon.
fn action_matches(filter: &str, action: &str) -> bool {
    filter == action
        || action
            .split_once(':')
            .is_some_and(|(name, _)| name == filter)
}

/// Matches the `container` filter: the full id, an id prefix or the name.
fn name_matches(filter: &str, event: &Event) -> bool {
    let filter = filter.strip_prefix('/').unwrap_or(filter);
    let name = event.attributes.get("name").map(String::as_str);
    event.actor_id.starts_with(filter) || name == Some(filter)
}

/// Matches the `image` filter against the image of a container event or
/// the image of an image event, with or without the tag.
fn image_matches(filter: &str, event: &Event) -> bool {
    let mut candidates = vec![event.actor_id.as_str()];
    candidates.extend(event.attributes.get("image").map(String::as_str));
    if event.kind == "image" {
        candidates.extend(event.attributes.get("name").map(String::as_str));
    }
    candidates
        .iter()
        .any(|candidate| *candidate == filter || strip_tag(candidate) == filter)
}

/// Removes a `:tag` from an image reference, leaving a registry port.
fn strip_tag(reference: &str) -> &str {
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => reference,
    }
}

/// Matches one `label` filter value, `key` or `key=value`.
fn label_matches(filter: &str, event: &Event) -> bool {
    match filter.split_once('=') {
        Some((key, value)) => event
            .attributes
            .get(key)
            .is_some_and(|actual| actual == value),
        None => event.attributes.contains_key(filter),
    }
}

/// The daemon's event history and the channel to live subscribers.
pub struct EventLog {
    history: Mutex<VecDeque<Event>>,
    sender: broadcast::Sender<Event>,
}

impl Default for EventLog {
    fn default() -> EventLog {
        EventLog {
            history: Mutex::new(VecDeque::with_capacity(HISTORY_SIZE)),
            sender: broadcast::channel(CHANNEL_SIZE).0,
        }
    }
}

impl EventLog {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Event>> {
        // A queue of plain values stays consistent after any panic.
        self.history
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Records an event and sends it to every subscriber. The history lock
    /// is held while sending, so a subscriber receives each event exactly
    /// once: either in its replayed history or on its channel.
    pub fn publish(&self, event: Event) {
        tracing::debug!(kind = event.kind, action = %event.action, actor = %event.actor_id, "event");
        let mut history = self.lock();
        if history.len() == HISTORY_SIZE {
            history.pop_front();
        }
        history.push_back(event.clone());
        // Sending fails only when no receiver exists, which is fine.
        let _ = self.sender.send(event);
    }

    /// Returns the recorded events and a channel for the ones that follow.
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let history = self.lock();
        (history.iter().cloned().collect(), self.sender.subscribe())
    }
}

/// Returns the current time in nanoseconds since the Unix epoch.
fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

impl Daemon {
    /// Publishes a container event. Its attributes are the container's
    /// labels, `image` and `name`, then `extra`.
    pub fn container_event(
        &self,
        record: &ContainerRecord,
        action: &str,
        extra: &[(&str, String)],
    ) {
        let mut attributes: BTreeMap<String, String> =
            record.config.labels.clone().unwrap_or_default();
        attributes.insert("image".into(), record.image.clone());
        attributes.insert("name".into(), record.name.clone());
        for (key, value) in extra {
            attributes.insert((*key).to_string(), value.clone());
        }
        self.events.publish(Event {
            kind: "container",
            action: action.to_string(),
            actor_id: record.id.clone(),
            attributes,
            time_nano: now_nanos(),
        });
    }

    /// Publishes an image event: `pull` names the reference as the actor,
    /// `tag`, `untag` and `delete` the image id. `name` is the reference
    /// the action concerns.
    pub fn image_event(&self, action: &str, actor_id: &str, name: &str) {
        let mut attributes = BTreeMap::new();
        attributes.insert("name".to_string(), name.to_string());
        self.events.publish(Event {
            kind: "image",
            action: action.to_string(),
            actor_id: actor_id.to_string(),
            attributes,
            time_nano: now_nanos(),
        });
    }

    /// Publishes the events of one image removal in order: `untag` for
    /// each reference removed, then `delete`. A digest reference removed
    /// along with a tag gets no event, because Docker's containerd image
    /// store keeps digests as part of the tagged image record. A digest
    /// reference removed alone, as for an image pulled by digest, gets one.
    pub fn image_removal_events(&self, image_id: &str, removed: &[RemoveEvent]) {
        let removes_tag = removed.iter().any(
            |event| matches!(event, RemoveEvent::Untagged(name) if !name.contains('@')),
        );
        for event in removed {
            match event {
                RemoveEvent::Untagged(name) if removes_tag && name.contains('@') => {}
                RemoveEvent::Untagged(name) => self.image_event("untag", image_id, name),
                RemoveEvent::Deleted(id) => self.image_event("delete", id, id),
            }
        }
    }

    /// Publishes the `prune` event that Docker sends after each prune of
    /// `kind` (`container`, `image`, `volume` or `network`), with no actor
    /// id and the bytes freed as the attribute `reclaimed`.
    pub fn prune_event(&self, kind: &'static str, reclaimed: u64) {
        let mut attributes = BTreeMap::new();
        attributes.insert("reclaimed".to_string(), reclaimed.to_string());
        self.events.publish(Event {
            kind,
            action: "prune".to_string(),
            actor_id: String::new(),
            attributes,
            time_nano: now_nanos(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &'static str, action: &str, id: &str, attributes: &[(&str, &str)]) -> Event {
        Event {
            kind,
            action: action.into(),
            actor_id: id.into(),
            attributes: attributes
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            time_nano: 1_700_000_000_123_456_789,
        }
    }

    fn filter(pairs: &[(&str, &[&str])]) -> EventFilter {
        EventFilter::new(
            pairs
                .iter()
                .map(|(key, values)| {
                    (
                        key.to_string(),
                        values.iter().map(|v| v.to_string()).collect(),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn container_event_json_has_legacy_fields() {
        let value = event(
            "container",
            "die",
            "abc",
            &[("image", "busybox"), ("exitCode", "3")],
        )
        .to_json();
        assert_eq!(value["status"], "die");
        assert_eq!(value["id"], "abc");
        assert_eq!(value["from"], "busybox");
        assert_eq!(value["time"], 1_700_000_000);
        assert_eq!(value["timeNano"], 1_700_000_000_123_456_789_i64);
        assert_eq!(value["Actor"]["Attributes"]["exitCode"], "3");
    }

    #[test]
    fn image_event_json_has_no_from() {
        let value = event("image", "pull", "busybox:latest", &[("name", "busybox")]).to_json();
        assert!(value.get("from").is_none());
        assert_eq!(value["Type"], "image");
    }

    #[test]
    fn prune_event_json_matches_docker() {
        let image = event("image", "prune", "", &[("reclaimed", "1984357")]).to_json();
        assert_eq!(image["status"], "prune");
        assert!(image.get("id").is_none());
        assert_eq!(image["Actor"]["ID"], "");
        assert_eq!(image["Actor"]["Attributes"]["reclaimed"], "1984357");
        let volume = event("volume", "prune", "", &[("reclaimed", "0")]).to_json();
        assert!(volume.get("status").is_none());
        assert!(volume.get("id").is_none());
    }

    #[test]
    fn filters_match_docker_rules() {
        let start = event(
            "container",
            "start",
            "0123abcd",
            &[("name", "web"), ("image", "redis:7"), ("env", "test")],
        );
        let exec = event(
            "container",
            "exec_start: sh -c date",
            "0123abcd",
            &[("name", "web")],
        );
        let pull = event("image", "pull", "redis:7", &[("name", "redis")]);

        assert!(filter(&[("event", &["start"])]).matches(&start));
        assert!(!filter(&[("event", &["die"])]).matches(&start));
        assert!(filter(&[("event", &["exec_start"])]).matches(&exec));
        assert!(filter(&[("container", &["web"])]).matches(&start));
        assert!(filter(&[("container", &["0123"])]).matches(&start));
        assert!(!filter(&[("container", &["web"])]).matches(&pull));
        assert!(filter(&[("image", &["redis"])]).matches(&start));
        assert!(filter(&[("image", &["redis:7"])]).matches(&pull));
        assert!(filter(&[("label", &["env=test"])]).matches(&start));
        assert!(!filter(&[("label", &["env=prod"])]).matches(&start));
        assert!(filter(&[("type", &["image"])]).matches(&pull));
        assert!(!filter(&[("type", &["image"]), ("event", &["pull"])]).matches(&start));
    }

    #[test]
    fn history_is_bounded() {
        let log = EventLog::default();
        for index in 0..HISTORY_SIZE + 10 {
            log.publish(event("container", "start", &index.to_string(), &[]));
        }
        let (history, _receiver) = log.subscribe();
        assert_eq!(history.len(), HISTORY_SIZE);
        assert_eq!(history[0].actor_id, "10");
    }
}

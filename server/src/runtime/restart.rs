//! Restart policies (`HostConfig.RestartPolicy`): which exits start a
//! container again, and after what delay, as Docker's daemon does.
//!
//! `always` and `unless-stopped` restart after every exit, `on-failure`
//! after a non-zero exit code, up to `MaximumRetryCount` restarts when it
//! is above 0. A container stopped or killed through the API is not
//! restarted. The delay starts at 100 ms and doubles with each restart,
//! up to one minute, and returns to 100 ms after a run of 10 s or more.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::error::{Error, Result};
use super::{Container, Daemon};

/// The delay before the first restart.
const FIRST_DELAY: Duration = Duration::from_millis(100);

/// The maximum delay between two restarts.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// A run at least this long resets the delay to `FIRST_DELAY`.
const STABLE_RUN: Duration = Duration::from_secs(10);

/// A restart policy's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    No,
    Always,
    UnlessStopped,
    OnFailure,
}

/// A container's restart policy, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub policy: Policy,
    /// The maximum number of restarts under `on-failure`, or 0 for no
    /// limit.
    pub maximum_retry_count: u64,
}

impl RestartPolicy {
    /// Parses `HostConfig.RestartPolicy` and rejects what Docker rejects,
    /// with Docker's messages. A missing policy is `no`.
    pub fn parse(value: &Value) -> Result<RestartPolicy> {
        let name = value["Name"].as_str().unwrap_or("");
        let count = value["MaximumRetryCount"].as_i64().unwrap_or(0);
        let invalid = |reason: String| Error::InvalidParameter(format!("invalid restart policy: {reason}"));
        let policy = match name {
            "" | "no" => Policy::No,
            "always" => Policy::Always,
            "unless-stopped" => Policy::UnlessStopped,
            "on-failure" => Policy::OnFailure,
            other => {
                return Err(invalid(format!(
                    "unknown policy '{other}'; use one of 'no', 'always', 'on-failure', or \
                     'unless-stopped'"
                )))
            }
        };
        match policy {
            // Docker accepts a count without a name, for compatibility.
            _ if name.is_empty() => {}
            Policy::OnFailure if count < 0 => {
                return Err(invalid("maximum retry count cannot be negative".into()));
            }
            Policy::OnFailure => {}
            _ if count < 0 => {
                return Err(invalid(
                    "maximum retry count can only be used with 'on-failure' and cannot be negative"
                        .into(),
                ));
            }
            _ if count > 0 => {
                return Err(invalid(
                    "maximum retry count can only be used with 'on-failure'".into(),
                ));
            }
            _ => {}
        }
        Ok(RestartPolicy {
            policy,
            maximum_retry_count: u64::try_from(count).unwrap_or(0),
        })
    }

    /// Returns whether an exit with `exit_code`, after `restart_count`
    /// restarts, starts the container again.
    pub fn restarts(&self, exit_code: i64, restart_count: u64) -> bool {
        match self.policy {
            Policy::No => false,
            Policy::Always | Policy::UnlessStopped => true,
            Policy::OnFailure => {
                exit_code != 0
                    && (self.maximum_retry_count == 0 || restart_count < self.maximum_retry_count)
            }
        }
    }
}

/// Returns the delay before the next restart, from the previous delay and
/// how long the run that ended took.
pub fn next_delay(previous: Option<Duration>, run: Duration) -> Duration {
    match previous {
        Some(previous) if run < STABLE_RUN => (previous * 2).min(MAX_DELAY),
        _ => FIRST_DELAY,
    }
}

impl Daemon {
    /// Starts `container` again after its exit when its restart policy
    /// calls for it and no client stopped it. Runs the wait on a task of
    /// its own.
    pub(super) fn schedule_restart(self: &Arc<Self>, container: &Arc<Container>) {
        let record = container.record();
        let Ok(policy) = RestartPolicy::parse(&record.host_config["RestartPolicy"]) else {
            return;
        };
        if record.auto_remove
            || container.stopped_by_client.load(Ordering::SeqCst)
            || container.removal_claimed.load(Ordering::SeqCst)
            || !policy.restarts(record.state.exit_code, record.restart_count)
        {
            return;
        }
        let run = match (record.state.started_at, record.state.finished_at) {
            (Some(started), Some(finished)) => (finished - started).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let delay = {
            let mut previous = container
                .restart_delay
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let delay = next_delay(*previous, run);
            *previous = Some(delay);
            delay
        };
        tracing::info!(
            container = %record.short_id(),
            exit_code = record.state.exit_code,
            restart_count = record.restart_count,
            delay_ms = delay.as_millis() as u64,
            "restarting container by its restart policy"
        );
        let daemon = self.clone();
        let container = container.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            daemon.restart_by_policy(&container).await;
        });
    }

    async fn restart_by_policy(self: &Arc<Self>, container: &Arc<Container>) {
        let removed = self.container(&container.id).is_err();
        let record = container.record();
        if removed || record.state.running() || container.stopped_by_client.load(Ordering::SeqCst) {
            return;
        }
        container.update(|record| record.restart_count += 1);
        if let Err(error) = self.start_container(container).await {
            tracing::warn!(container = %record.short_id(), %error, "restart by restart policy failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RestartPolicy> {
        RestartPolicy::parse(&serde_json::from_str(text).unwrap())
    }

    fn message(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn missing_policy_is_no() {
        assert_eq!(RestartPolicy::parse(&Value::Null).unwrap().policy, Policy::No);
        assert_eq!(parse(r#"{"Name": ""}"#).unwrap().policy, Policy::No);
        // A count without a name is accepted, as Docker does.
        assert_eq!(parse(r#"{"MaximumRetryCount": -1}"#).unwrap().policy, Policy::No);
    }

    #[test]
    fn invalid_policies_rejected() {
        assert!(message(r#"{"Name": "sometimes"}"#).contains("unknown policy 'sometimes'"));
        assert!(message(r#"{"Name": "always", "MaximumRetryCount": 2}"#)
            .contains("maximum retry count can only be used with 'on-failure'"));
        assert!(message(r#"{"Name": "no", "MaximumRetryCount": -2}"#)
            .contains("can only be used with 'on-failure' and cannot be negative"));
        assert!(message(r#"{"Name": "on-failure", "MaximumRetryCount": -2}"#)
            .contains("maximum retry count cannot be negative"));
    }

    #[test]
    fn on_failure_counts_restarts() {
        let policy = parse(r#"{"Name": "on-failure", "MaximumRetryCount": 2}"#).unwrap();
        assert!(!policy.restarts(0, 0));
        assert!(policy.restarts(1, 0));
        assert!(policy.restarts(1, 1));
        assert!(!policy.restarts(1, 2));
        let unlimited = parse(r#"{"Name": "on-failure"}"#).unwrap();
        assert!(unlimited.restarts(137, 1000));
    }

    #[test]
    fn always_restarts_every_exit() {
        let policy = parse(r#"{"Name": "always"}"#).unwrap();
        assert!(policy.restarts(0, 0));
        assert!(policy.restarts(1, 50));
        assert!(!parse(r#"{"Name": "no"}"#).unwrap().restarts(1, 0));
    }

    #[test]
    fn delay_doubles_until_stable_run() {
        let short = Duration::from_secs(1);
        let first = next_delay(None, short);
        assert_eq!(first, FIRST_DELAY);
        assert_eq!(next_delay(Some(first), short), FIRST_DELAY * 2);
        assert_eq!(next_delay(Some(MAX_DELAY), short), MAX_DELAY);
        assert_eq!(next_delay(Some(MAX_DELAY), STABLE_RUN), FIRST_DELAY);
    }
}

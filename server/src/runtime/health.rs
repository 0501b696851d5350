//! Health checks: `Config.Healthcheck` probes run as execs in the running
//! container, and the `State.Health` they produce.
//!
//! The transitions follow Docker's documentation of `HEALTHCHECK`: the
//! status is `starting` until the first success, `healthy` after any
//! success, and `unhealthy` after `Retries` consecutive failures. Failures
//! during the start period do not count while the status is `starting`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sidewhale_core::{Process, ProcessSpec};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::model::{ContainerConfig, ContainerRecord};
use super::{Container, Daemon, Error, Result};

/// Docker's defaults for fields left out or zero.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u64 = 3;

/// The number of probe results `State.Health.Log` keeps.
const LOG_ENTRIES: usize = 5;
/// The maximum bytes of probe output kept per result: Docker's reference
/// of the Dockerfile `HEALTHCHECK` instruction says it stores the first
/// 4096 bytes.
const MAX_OUTPUT: usize = 4096;
/// The smallest interval, timeout or period Docker accepts.
const MIN_DURATION: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// One probe result of `State.Health.Log`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HealthLog {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// 0 for success; -1 when the probe timed out or could not run.
    pub exit_code: i64,
    pub output: String,
}

/// `State.Health`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    pub failing_streak: u64,
    pub log: Vec<HealthLog>,
}

/// A parsed `Healthcheck` with Docker's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Healthcheck {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub start_interval: Duration,
    pub retries: u64,
}

/// Reads a duration in nanoseconds, where zero or a missing field means
/// the default.
fn nanoseconds(value: &Value, key: &str) -> Result<Option<Duration>> {
    match &value[key] {
        Value::Null => Ok(None),
        Value::Number(number) => match number.as_i64() {
            Some(0) => Ok(None),
            Some(nanos) if nanos > 0 => {
                let duration = Duration::from_nanos(nanos.unsigned_abs());
                if duration < MIN_DURATION {
                    return Err(Error::InvalidParameter(format!(
                        "{key} in Healthcheck cannot be less than {}ms",
                        MIN_DURATION.as_millis()
                    )));
                }
                Ok(Some(duration))
            }
            _ => Err(Error::InvalidParameter(format!(
                "{key} in Healthcheck cannot be negative"
            ))),
        },
        other => Err(Error::InvalidParameter(format!(
            "invalid {key} in Healthcheck: {other}"
        ))),
    }
}

/// Parses `Config.Healthcheck`. Returns `None` when there is no check:
/// no `Test`, an empty one, or `["NONE"]`.
pub fn parse(config: &ContainerConfig) -> Result<Option<Healthcheck>> {
    let Some(value) = config.healthcheck.as_ref().filter(|value| !value.is_null()) else {
        return Ok(None);
    };
    let test: Vec<String> = match &value["Test"] {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                Error::InvalidParameter("Healthcheck.Test must be a list of strings".into())
            })?,
        other => {
            return Err(Error::InvalidParameter(format!(
                "invalid Healthcheck.Test: {other}"
            )))
        }
    };
    let argv = match test.split_first() {
        None => return Ok(None),
        Some((kind, _)) if kind == "NONE" => return Ok(None),
        Some((kind, rest)) if kind == "CMD" => rest.to_vec(),
        Some((kind, rest)) if kind == "CMD-SHELL" => {
            vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
        }
        Some((kind, _)) => {
            return Err(Error::InvalidParameter(format!(
                "unknown Healthcheck.Test type {kind:?}: expected CMD, CMD-SHELL or NONE"
            )))
        }
    };
    if argv.is_empty() {
        return Err(Error::InvalidParameter(
            "Healthcheck.Test has no command".into(),
        ));
    }
    let retries = match &value["Retries"] {
        Value::Null => DEFAULT_RETRIES,
        Value::Number(number) => match number.as_i64() {
            Some(0) => DEFAULT_RETRIES,
            Some(retries) if retries > 0 => retries.unsigned_abs(),
            _ => {
                return Err(Error::InvalidParameter(
                    "Retries in Healthcheck cannot be negative".into(),
                ))
            }
        },
        other => {
            return Err(Error::InvalidParameter(format!(
                "invalid Retries in Healthcheck: {other}"
            )))
        }
    };
    Ok(Some(Healthcheck {
        argv,
        interval: nanoseconds(value, "Interval")?.unwrap_or(DEFAULT_INTERVAL),
        timeout: nanoseconds(value, "Timeout")?.unwrap_or(DEFAULT_TIMEOUT),
        start_period: nanoseconds(value, "StartPeriod")?.unwrap_or_default(),
        start_interval: nanoseconds(value, "StartInterval")?.unwrap_or(DEFAULT_START_INTERVAL),
        retries,
    }))
}

/// Applies one probe result to the health state and returns whether the
/// status changed. `in_start_period` is whether the probe began within the
/// start period.
pub fn record_result(
    health: &mut Health,
    result: HealthLog,
    retries: u64,
    in_start_period: bool,
) -> bool {
    let before = health.status;
    if result.exit_code == 0 {
        health.failing_streak = 0;
        health.status = HealthStatus::Healthy;
    } else if !(in_start_period && health.status == HealthStatus::Starting) {
        health.failing_streak += 1;
        if health.failing_streak >= retries {
            health.status = HealthStatus::Unhealthy;
        }
    }
    health.log.push(result);
    if health.log.len() > LOG_ENTRIES {
        let excess = health.log.len() - LOG_ENTRIES;
        health.log.drain(..excess);
    }
    health.status != before
}

impl Daemon {
    /// Sets `State.Health` to `starting` and runs the container's health
    /// check until the container exits. Does nothing without a check.
    pub(super) fn start_health_monitor(self: &Arc<Self>, container: &Arc<Container>) {
        let record = container.record();
        let check = match parse(&record.config) {
            Ok(Some(check)) => check,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(container = %record.short_id(), %error, "invalid health check, not running it");
                return;
            }
        };
        let exits = record.state.exits;
        container.update(|record| {
            let log = record
                .state
                .health
                .take()
                .map(|health| health.log)
                .unwrap_or_default();
            record.state.health = Some(Health {
                status: HealthStatus::Starting,
                failing_streak: 0,
                log,
            });
        });
        tracing::info!(container = %record.short_id(), argv = ?check.argv, interval = ?check.interval, "starting health checks");
        tokio::spawn(self.clone().monitor_health(container.clone(), check, exits));
    }

    /// Runs probes on schedule while the run that began with `exits`
    /// recorded exits is still going.
    async fn monitor_health(
        self: Arc<Self>,
        container: Arc<Container>,
        check: Healthcheck,
        exits: u64,
    ) {
        let mut changes = container.subscribe();
        let started = tokio::time::Instant::now();
        let same_run =
            |record: &ContainerRecord| record.state.running() && record.state.exits == exits;
        loop {
            let in_start_period = started.elapsed() < check.start_period;
            let wait = if in_start_period {
                check.start_interval
            } else {
                check.interval
            };
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    changed = changes.changed() => {
                        if changed.is_err() || !same_run(&container.record()) {
                            tracing::debug!(container = %&container.id[..12], "health checks stopped");
                            return;
                        }
                    }
                }
            }
            let record = container.record();
            if !same_run(&record) {
                return;
            }
            if record.state.paused {
                continue;
            }
            let in_start_period = started.elapsed() < check.start_period;
            let result = self.run_probe(&container, &record, &check).await;
            tracing::debug!(container = %record.short_id(), exit_code = result.exit_code, "health probe finished");
            let changed = container.update(|record| {
                if !same_run(record) {
                    return None;
                }
                let health = record.state.health.get_or_insert(Health {
                    status: HealthStatus::Starting,
                    failing_streak: 0,
                    log: Vec::new(),
                });
                let changed = record_result(health, result, check.retries, in_start_period);
                changed.then_some(health.status)
            });
            if let Some(status) = changed {
                tracing::info!(container = %record.short_id(), status = status.as_str(), "health status changed");
                let action = format!("health_status: {}", status.as_str());
                self.container_event(&container.record(), &action, &[]);
            }
        }
    }

    /// Runs the probe once, as an exec with the container's environment,
    /// user and working directory.
    ///
    /// NOTE: probes are not registered as exec instances, so they publish no
    /// `exec_*` events and are missing from inspect's `ExecIDs`.
    async fn run_probe(
        &self,
        container: &Container,
        record: &ContainerRecord,
        check: &Healthcheck,
    ) -> HealthLog {
        let start = Utc::now();
        let failed = |exit_code: i64, output: String| HealthLog {
            start,
            end: Utc::now(),
            exit_code,
            output,
        };
        let executor = match self.executor(&record.runtime) {
            Ok(executor) => executor,
            Err(error) => return failed(-1, error.to_string()),
        };
        let process = ProcessSpec {
            argv: check.argv.clone(),
            env: record.process_env(),
            working_dir: record.config.working_dir.clone().unwrap_or_default(),
            user: record.config.user.clone().unwrap_or_default(),
            tty: false,
            open_stdin: false,
            console_size: None,
        };
        let spec = self.container_spec(container);
        let started = match executor.exec(&spec, &process).await {
            Ok(started) => started,
            Err(error) => {
                tracing::debug!(container = %record.short_id(), %error, "health probe failed to start");
                let exit_code = match error {
                    sidewhale_core::ExecutorError::NotFound(_) => 127,
                    _ => 126,
                };
                return failed(exit_code, error.to_string());
            }
        };
        let control = started.control.clone();
        match tokio::time::timeout(check.timeout, collect(started)).await {
            Ok((exit_code, output)) => HealthLog {
                start,
                end: Utc::now(),
                exit_code,
                output,
            },
            Err(_) => {
                if let Err(error) = control.kill_all() {
                    tracing::warn!(container = %record.short_id(), %error, "failed to kill a timed-out health probe");
                }
                let timeout = go_duration_text(check.timeout);
                failed(-1, format!("Health check exceeded timeout ({timeout})"))
            }
        }
    }
}

/// Reads a probe's output, at most `MAX_OUTPUT` bytes of it, and waits for
/// its exit.
async fn collect(process: Process) -> (i64, String) {
    let Process {
        stdout,
        stderr,
        exit,
        ..
    } = process;
    let (stdout, stderr) = tokio::join!(read_limited(stdout), async {
        match stderr {
            Some(stderr) => read_limited(stderr).await,
            None => Vec::new(),
        }
    });
    let status = exit.await;
    let mut output = stdout;
    output.extend(stderr);
    output.truncate(MAX_OUTPUT);
    (status.code(), String::from_utf8_lossy(&output).into_owned())
}

/// Reads a stream to its end and returns its first `MAX_OUTPUT` bytes. The
/// rest is read and dropped, so the probe does not block on a full pipe.
async fn read_limited(mut reader: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut output = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return output,
            Ok(read) => {
                let room = MAX_OUTPUT.saturating_sub(output.len());
                output.extend_from_slice(&buffer[..read.min(room)]);
            }
        }
    }
}

/// Formats a timeout as Go prints a `time.Duration` of whole or
/// fractional seconds, such as `30s` or `1.5s`.
fn go_duration_text(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds >= 1.0 {
        format!("{seconds}s")
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(healthcheck: Value) -> ContainerConfig {
        ContainerConfig {
            healthcheck: Some(healthcheck),
            ..Default::default()
        }
    }

    fn result(exit_code: i64) -> HealthLog {
        HealthLog {
            start: Utc::now(),
            end: Utc::now(),
            exit_code,
            output: String::new(),
        }
    }

    fn starting() -> Health {
        Health {
            status: HealthStatus::Starting,
            failing_streak: 0,
            log: Vec::new(),
        }
    }

    #[test]
    fn parse_applies_defaults() {
        let check = parse(&config(serde_json::json!({"Test": ["CMD", "true"]})))
            .unwrap()
            .unwrap();
        assert_eq!(check.argv, vec!["true"]);
        assert_eq!(check.interval, DEFAULT_INTERVAL);
        assert_eq!(check.timeout, DEFAULT_TIMEOUT);
        assert_eq!(check.start_period, Duration::ZERO);
        assert_eq!(check.start_interval, DEFAULT_START_INTERVAL);
        assert_eq!(check.retries, 3);
    }

    #[test]
    fn parse_shell_form_and_none() {
        let check = parse(&config(serde_json::json!({
            "Test": ["CMD-SHELL", "pg_isready -U postgres"],
            "Interval": 1_000_000_000_i64,
            "Retries": 5,
        })))
        .unwrap()
        .unwrap();
        assert_eq!(check.argv, vec!["/bin/sh", "-c", "pg_isready -U postgres"]);
        assert_eq!(check.interval, Duration::from_secs(1));
        assert_eq!(check.retries, 5);
        assert!(parse(&config(serde_json::json!({"Test": ["NONE"]})))
            .unwrap()
            .is_none());
        assert!(parse(&ContainerConfig::default()).unwrap().is_none());
    }

    #[test]
    fn parse_rejects_invalid_values() {
        assert!(parse(&config(
            serde_json::json!({"Test": ["CMD", "x"], "Interval": -1})
        ))
        .is_err());
        assert!(parse(&config(
            serde_json::json!({"Test": ["CMD", "x"], "Timeout": 10})
        ))
        .is_err());
        assert!(parse(&config(serde_json::json!({"Test": ["BOGUS", "x"]}))).is_err());
        assert!(parse(&config(serde_json::json!({"Test": ["CMD"]}))).is_err());
    }

    #[test]
    fn success_makes_healthy() {
        let mut health = starting();
        assert!(record_result(&mut health, result(0), 3, false));
        assert_eq!(health.status, HealthStatus::Healthy);
    }

    #[test]
    fn failures_make_unhealthy_after_retries() {
        let mut health = starting();
        assert!(!record_result(&mut health, result(1), 2, false));
        assert_eq!(health.status, HealthStatus::Starting);
        assert!(record_result(&mut health, result(1), 2, false));
        assert_eq!(health.status, HealthStatus::Unhealthy);
        assert_eq!(health.failing_streak, 2);
        assert!(record_result(&mut health, result(0), 2, false));
        assert_eq!(health.failing_streak, 0);
    }

    #[test]
    fn start_period_failures_do_not_count() {
        let mut health = starting();
        for _ in 0..5 {
            record_result(&mut health, result(1), 1, true);
        }
        assert_eq!(health.status, HealthStatus::Starting);
        assert_eq!(health.failing_streak, 0);
        assert_eq!(health.log.len(), LOG_ENTRIES);
    }

    #[test]
    fn timeouts_print_like_go() {
        assert_eq!(go_duration_text(Duration::from_secs(30)), "30s");
        assert_eq!(go_duration_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration_text(Duration::from_millis(200)), "200ms");
    }
}

//! `GET /containers/{id}/stats` and `GET /containers/{id}/top`, computed
//! from `/proc` for the container's main process and its descendants.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Local, SecondsFormat, TimeZone, Utc};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::query::{self, flag};
use super::{streaming, ApiResult, AppState};
use crate::runtime::model::ContainerRecord;
use crate::runtime::processes::{self, ProcessInfo};
use crate::runtime::{Container, Daemon};

/// Docker's zero time, the `preread` of a first sample.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
/// The time between two samples of a stream.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Counters of a running container at one moment.
#[derive(Clone, Debug, Default)]
struct Sample {
    read: Option<DateTime<Utc>>,
    user_ns: u64,
    system_ns: u64,
    /// The host's CPU time in nanoseconds, summed over every CPU.
    host_ns: u64,
    online_cpus: usize,
    memory_anon: u64,
    memory_file: u64,
    memory_shmem: u64,
    memory_limit: u64,
    pids: usize,
    read_bytes: u64,
    write_bytes: u64,
    /// Receive and transmit counters: bytes, packets, errors, dropped.
    network: [u64; 8],
}

/// Sums the interfaces of `/proc/PID/net/dev`.
fn network_counters(pid: u32) -> [u64; 8] {
    let mut totals = [0u64; 8];
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) else {
        return totals;
    };
    for line in text.lines().skip(2) {
        let Some((_, counters)) = line.split_once(':') else {
            continue;
        };
        let fields: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|field| field.parse().ok())
            .collect();
        if fields.len() < 12 {
            continue;
        }
        // Receive: bytes, packets, errs, drop at 0..4; transmit at 8..12.
        let picked = [
            fields[0], fields[1], fields[2], fields[3], fields[8], fields[9], fields[10],
            fields[11],
        ];
        for (total, value) in totals.iter_mut().zip(picked) {
            *total += value;
        }
    }
    totals
}

/// Takes a sample, or returns `None` when the container is not running.
fn take_sample(daemon: &Daemon, container: &Container) -> Option<Sample> {
    let pid = container.running_pid().ok()?;
    let tick_ns = 1_000_000_000 / processes::clock_ticks();
    let list: Vec<ProcessInfo> = processes::descendants(pid)
        .into_iter()
        .filter_map(processes::read_process)
        .collect();
    let mut sample = Sample {
        read: Some(Utc::now()),
        host_ns: processes::system_ticks() * tick_ns,
        online_cpus: std::thread::available_parallelism().map_or(1, usize::from),
        memory_limit: processes::memory_total(),
        pids: list.iter().map(|info| info.threads as usize).sum(),
        ..Sample::default()
    };
    for info in &list {
        // The times of reaped children count as user time: /proc does not
        // split them here.
        sample.user_ns += (info.user_ticks + info.children_ticks) * tick_ns;
        sample.system_ns += info.system_ticks * tick_ns;
        sample.memory_anon += info.rss_anon;
        sample.memory_file += info.rss_file;
        sample.memory_shmem += info.rss_shmem;
        sample.read_bytes += info.read_bytes;
        sample.write_bytes += info.write_bytes;
    }
    // NOTE: a container on the host's network has no counters of its own,
    // so it reports zeros rather than the host's traffic.
    if daemon.isolation.namespace(&container.id).is_some() {
        sample.network = network_counters(pid);
    }
    Some(sample)
}

fn cpu_json(sample: Option<&Sample>) -> Value {
    let sample = sample.cloned().unwrap_or_default();
    json!({
        "cpu_usage": {
            "total_usage": sample.user_ns + sample.system_ns,
            "usage_in_kernelmode": sample.system_ns,
            "usage_in_usermode": sample.user_ns,
        },
        "system_cpu_usage": sample.host_ns,
        "online_cpus": sample.online_cpus,
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    })
}

fn time_json(time: Option<DateTime<Utc>>) -> String {
    time.map_or(ZERO_TIME.to_string(), |time| {
        time.to_rfc3339_opts(SecondsFormat::Nanos, true)
    })
}

/// Renders one stats object in the cgroup v2 shape of Docker 25 and later.
fn render(record: &ContainerRecord, current: Option<&Sample>, previous: Option<&Sample>) -> Value {
    let mut value = json!({
        "read": time_json(current.and_then(|sample| sample.read)),
        "preread": time_json(previous.and_then(|sample| sample.read)),
        "pids_stats": {},
        "blkio_stats": {
            "io_service_bytes_recursive": null,
            "io_serviced_recursive": null,
            "io_queue_recursive": null,
            "io_service_time_recursive": null,
            "io_wait_time_recursive": null,
            "io_merged_recursive": null,
            "io_time_recursive": null,
            "sectors_recursive": null,
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu_json(current),
        "precpu_stats": cpu_json(previous),
        "memory_stats": {},
        "name": format!("/{}", record.name),
        "id": record.id,
    });
    let Some(sample) = current else {
        return value;
    };
    value["pids_stats"] = json!({"current": sample.pids});
    value["blkio_stats"]["io_service_bytes_recursive"] = json!([
        {"major": 0, "minor": 0, "op": "read", "value": sample.read_bytes},
        {"major": 0, "minor": 0, "op": "write", "value": sample.write_bytes},
    ]);
    let usage = sample.memory_anon + sample.memory_file + sample.memory_shmem;
    value["memory_stats"] = json!({
        "usage": usage,
        "stats": {
            "anon": sample.memory_anon,
            "file": sample.memory_file,
            "shmem": sample.memory_shmem,
            "active_file": 0,
            "inactive_file": 0,
        },
        "limit": sample.memory_limit,
    });
    let network = sample.network;
    value["networks"] = json!({
        "eth0": {
            "rx_bytes": network[0],
            "rx_packets": network[1],
            "rx_errors": network[2],
            "rx_dropped": network[3],
            "tx_bytes": network[4],
            "tx_packets": network[5],
            "tx_errors": network[6],
            "tx_dropped": network[7],
        }
    });
    value
}

fn line(value: &Value) -> Bytes {
    Bytes::from(format!("{value}\n"))
}

/// Serves `GET /containers/{id}/stats`. With `stream=false` it takes two
/// samples a second apart, so that `precpu_stats` is filled, unless
/// `one-shot` requests a single sample. A streamed response sends one
/// object a second until the container stops or the client leaves.
pub async fn stats(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<Response> {
    let container = daemon.container(&id)?;
    let stream = query.get("stream").is_none_or(|_| flag(&query, "stream"));
    let one_shot = flag(&query, "one-shot");
    let first = take_sample(&daemon, &container);

    if !stream {
        let record = container.record();
        if one_shot || first.is_none() {
            return Ok(json_response(render(&record, first.as_ref(), None)));
        }
        tokio::time::sleep(STATS_INTERVAL).await;
        let second = take_sample(&daemon, &container);
        let body = match second {
            Some(second) => render(&record, Some(&second), first.as_ref()),
            None => render(&record, None, None),
        };
        return Ok(json_response(body));
    }

    let (sender, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut previous: Option<Sample> = None;
        let mut current = first;
        loop {
            let record = container.record();
            let value = render(&record, current.as_ref(), previous.as_ref());
            if sender.send(Ok(line(&value))).await.is_err() || current.is_none() {
                tracing::debug!(container = %record.short_id(), "stats stream ended");
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(STATS_INTERVAL) => {}
                () = sender.closed() => return,
            }
            previous = current;
            current = take_sample(&daemon, &container);
        }
    });
    Ok(streaming(
        "application/json",
        Body::from_stream(ReceiverStream::new(body)),
    ))
}

fn json_response(value: Value) -> Response {
    streaming("application/json", Body::from(line(&value)))
}

/// Formats seconds of CPU time as `ps` does: `HH:MM:SS`, with a day prefix
/// past 24 hours.
fn cpu_time(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let clock = format!(
        "{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    if days > 0 {
        format!("{days}-{clock}")
    } else {
        clock
    }
}

/// Names a terminal from its device number, as `ps` does for the
/// pseudo-terminals and virtual consoles that containers get.
fn tty_name(device: u64) -> String {
    let major = (device >> 8) & 0xfff;
    let minor = (device & 0xff) | ((device >> 12) & 0xfff00);
    match major {
        0 => "?".to_string(),
        4 => format!("tty{minor}"),
        136..=143 => format!("pts/{}", minor + (major - 136) * 256),
        _ => "?".to_string(),
    }
}

/// Renders one row of `ps -ef` for a process.
fn top_row(info: &ProcessInfo, ticks: u64, boot: i64, now: DateTime<Utc>) -> Vec<String> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(info.uid))
        .ok()
        .flatten()
        .map_or_else(|| info.uid.to_string(), |user| user.name);
    let cpu_seconds = (info.user_ticks + info.system_ticks) / ticks;
    let started = boot + i64::try_from(info.start_ticks / ticks).unwrap_or(0);
    let elapsed = (now.timestamp() - started).max(1);
    let percent = (info.user_ticks + info.system_ticks) * 100 / ticks / elapsed.unsigned_abs();
    let start_time = Local.timestamp_opt(started, 0).single();
    let today = Local::now().date_naive();
    let stime = match start_time {
        Some(time) if time.date_naive() == today => time.format("%H:%M").to_string(),
        Some(time) => time.format("%b%d").to_string(),
        None => "?".to_string(),
    };
    let command = if info.cmdline.is_empty() {
        format!("[{}]", info.comm)
    } else {
        info.cmdline.join(" ")
    };
    vec![
        user,
        info.pid.to_string(),
        info.ppid.to_string(),
        percent.to_string(),
        stime,
        tty_name(info.tty),
        cpu_time(cpu_seconds),
        command,
    ]
}

/// Serves `GET /containers/{id}/top` in the columns of `ps -ef`.
///
/// NOTE: `ps_args` is ignored; the columns are always those of `-ef`.
pub async fn top(State(daemon): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let container = daemon.container(&id)?;
    let list = container.processes()?;
    let ticks = processes::clock_ticks();
    let boot = processes::boot_time();
    let now = Utc::now();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|info| top_row(info, ticks, boot, now))
        .collect();
    Ok(Json(json!({
        "Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
        "Processes": rows,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_reads_like_ps() {
        assert_eq!(cpu_time(0), "00:00:00");
        assert_eq!(cpu_time(3_725), "01:02:05");
        assert_eq!(cpu_time(90_000), "1-01:00:00");
    }

    #[test]
    fn tty_names() {
        assert_eq!(tty_name(0), "?");
        assert_eq!(tty_name(136 << 8 | 3), "pts/3");
        assert_eq!(tty_name(4 << 8 | 1), "tty1");
    }
}

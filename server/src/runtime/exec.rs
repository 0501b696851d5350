//! Exec instances: further processes run in a running container.

use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng;
use serde::Deserialize;
use sidewhale_core::{ExecutorError, Process, ProcessControl, ProcessSpec};

use super::model::string_or_list;
use super::{Container, Daemon, Error, Result};

/// The body of `POST /containers/{id}/exec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecConfig {
    pub attach_stdin: Option<bool>,
    pub attach_stdout: Option<bool>,
    pub attach_stderr: Option<bool>,
    pub detach_keys: Option<String>,
    pub tty: Option<bool>,
    pub env: Option<Vec<String>>,
    #[serde(deserialize_with = "string_or_list")]
    pub cmd: Option<Vec<String>>,
    pub privileged: Option<bool>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ExecState {
    pub started: bool,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub pid: u32,
}

pub struct ExecInstance {
    pub id: String,
    pub container_id: String,
    pub config: ExecConfig,
    state: Mutex<ExecState>,
    control: Mutex<Option<Arc<dyn ProcessControl>>>,
}

impl ExecInstance {
    fn lock(&self) -> MutexGuard<'_, ExecState> {
        // Plain data, consistent after any panic: a poisoned lock is safe.
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn state(&self) -> ExecState {
        self.lock().clone()
    }

    /// Records the exit code of the process.
    pub fn finish(&self, exit_code: i64) {
        let mut state = self.lock();
        state.running = false;
        state.exit_code = Some(exit_code);
        *self.control.lock().unwrap_or_else(|poison| poison.into_inner()) = None;
    }

    /// Returns the command as Docker's exec events show it, joined by
    /// spaces.
    pub fn command_line(&self) -> String {
        self.config.cmd.clone().unwrap_or_default().join(" ")
    }

    pub fn resize(&self, rows: u16, columns: u16) -> Result<()> {
        let control = self.control.lock().unwrap_or_else(|poison| poison.into_inner()).clone();
        match control {
            Some(control) => Ok(control.resize(rows, columns)?),
            None => Err(Error::Conflict(format!("Exec {} is not running", self.id))),
        }
    }
}

/// The outcome of starting an exec: a running process, or the message of
/// one that could not start. Docker still streams that message to the
/// client, and the exec records exit code 126 or 127.
pub enum ExecStart {
    Running(Process),
    Failed { message: String },
}

impl Daemon {
    pub fn create_exec(&self, container: &Container, config: ExecConfig) -> Result<String> {
        let record = container.record();
        if !record.state.running() {
            return Err(Error::Conflict(format!("Container {} is not running", record.id)));
        }
        if record.state.paused {
            return Err(Error::Conflict(format!(
                "Container {} is paused, unpause the container before exec",
                record.id
            )));
        }
        if config.cmd.as_ref().is_none_or(Vec::is_empty) {
            return Err(Error::InvalidParameter("No exec command specified".into()));
        }
        let id = hex::encode(rand::thread_rng().gen::<[u8; 32]>());
        let instance = ExecInstance {
            id: id.clone(),
            container_id: record.id.clone(),
            config,
            state: Mutex::new(ExecState::default()),
            control: Mutex::new(None),
        };
        let action = format!("exec_create: {}", instance.command_line());
        self.lock_execs().insert(id.clone(), Arc::new(instance));
        self.container_event(&record, &action, &[("execID", id.clone())]);
        Ok(id)
    }

    /// Records the exit of an exec's process and publishes `exec_die`.
    pub fn finish_exec(&self, exec: &ExecInstance, exit_code: i64) {
        exec.finish(exit_code);
        if let Ok(container) = self.container(&exec.container_id) {
            let attributes = [("execID", exec.id.clone()), ("exitCode", exit_code.to_string())];
            self.container_event(&container.record(), "exec_die", &attributes);
        }
    }

    fn lock_execs(&self) -> MutexGuard<'_, std::collections::HashMap<String, Arc<ExecInstance>>> {
        // The map is consistent after any panic, so poisoning is ignored.
        self.execs.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn exec(&self, id: &str) -> Result<Arc<ExecInstance>> {
        self.lock_execs()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("No such exec instance: {id}")))
    }

    pub(super) fn remove_execs_of(&self, container_id: &str) {
        self.lock_execs().retain(|_, exec| exec.container_id != container_id);
    }

    /// Starts the exec's process. `tty` overrides the exec's own setting
    /// when the start request names one.
    pub async fn start_exec(
        &self,
        exec: &ExecInstance,
        tty: Option<bool>,
        console_size: Option<[u16; 2]>,
    ) -> Result<ExecStart> {
        let container = self.container(&exec.container_id)?;
        let record = container.record();
        {
            let mut state = exec.lock();
            if state.started {
                let message = if state.running {
                    format!("Exec command {} is already running", exec.id)
                } else {
                    format!("Exec command {} has already run", exec.id)
                };
                return Err(Error::Conflict(message));
            }
            if !record.state.running() {
                return Err(Error::Conflict(format!("Container {} is not running", record.id)));
            }
            state.started = true;
            state.running = true;
        }

        let mut env = record.process_env();
        for entry in exec.config.env.clone().unwrap_or_default() {
            let key = entry.split('=').next().unwrap_or_default().to_string();
            env.retain(|existing| existing.split('=').next() != Some(key.as_str()));
            env.push(entry);
        }
        let tty = tty.or(exec.config.tty).unwrap_or(false);
        // Docker sets TERM for an exec with a terminal, as for a container.
        if tty && !super::model::env_has(&env, "TERM") {
            env.push("TERM=xterm".to_string());
        }
        let non_empty = |value: &Option<String>| value.clone().filter(|text| !text.is_empty());
        let process = ProcessSpec {
            argv: exec.config.cmd.clone().unwrap_or_default(),
            env,
            working_dir: non_empty(&exec.config.working_dir)
                .or_else(|| record.config.working_dir.clone())
                .unwrap_or_default(),
            user: non_empty(&exec.config.user)
                .or_else(|| record.config.user.clone())
                .unwrap_or_default(),
            tty,
            console_size,
            open_stdin: exec.config.attach_stdin.unwrap_or(false),
        };

        let executor = self.executor(&record.runtime)?;
        let spec = self.container_spec(&container);
        tracing::info!(container = %record.short_id(), exec = %&exec.id[..12], argv = ?process.argv, "starting exec");
        match executor.exec(&spec, &process).await {
            Ok(started) => {
                exec.lock().pid = started.control.pid().unwrap_or(0);
                *exec.control.lock().unwrap_or_else(|poison| poison.into_inner()) =
                    Some(started.control.clone());
                let action = format!("exec_start: {}", exec.command_line());
                self.container_event(&record, &action, &[("execID", exec.id.clone())]);
                Ok(ExecStart::Running(started))
            }
            Err(error) => {
                let exit_code = match &error {
                    ExecutorError::NotFound(_) => 127,
                    ExecutorError::NotExecutable(_) => 126,
                    _ => 126,
                };
                tracing::info!(exec = %&exec.id[..12], %error, exit_code, "exec failed to start");
                self.finish_exec(exec, exit_code);
                let message = format!(
                    "OCI runtime exec failed: exec failed: unable to start container process: {error}\r\n"
                );
                Ok(ExecStart::Failed { message })
            }
        }
    }
}

//! A plugin named `faulty` for sidewhale's tests: `start`, `exec` and
//! `cleanup` panic, and `prepare` fails with an I/O error. The tests in
//! `executors/tests/plugin.rs` check that each failure reaches the caller
//! as an error and that the process survives.

use sidewhale_plugin_abi::export::{ExecutorPlugin, PluginProcess};
use sidewhale_plugin_abi::{ContainerRequest, ExecRequest, PluginError, PluginExit, ProbeResponse};

sidewhale_plugin_abi::export_executor!(FaultyPlugin);

/// `ENOSPC` on Linux, the error number `prepare` reports.
const NO_SPACE: i32 = 28;

struct FaultyPlugin;

impl ExecutorPlugin for FaultyPlugin {
    fn name(&self) -> &str {
        "faulty"
    }

    fn probe(&self) -> ProbeResponse {
        ProbeResponse::Available
    }

    fn prepare(&self, container: ContainerRequest) -> Result<(), PluginError> {
        Err(PluginError::Io {
            operation: format!("prepare {}", container.id),
            message: "no space left on device".into(),
            errno: Some(NO_SPACE),
        })
    }

    fn start(&self, container: ContainerRequest) -> Result<PluginProcess, PluginError> {
        panic!("deliberate panic in start of {}", container.id);
    }

    fn exec(&self, _request: ExecRequest) -> Result<PluginProcess, PluginError> {
        let values: Vec<u32> = Vec::new();
        // Indexing out of bounds panics with a formatted message.
        let _ = values[3];
        Err(PluginError::other("unreachable"))
    }

    fn signal(&self, _handle: u64, _signal: i32) -> Result<(), PluginError> {
        Err(PluginError::InvalidRequest {
            message: "no processes".into(),
        })
    }

    fn kill_all(&self, _handle: u64) -> Result<(), PluginError> {
        Ok(())
    }

    fn pid(&self, _handle: u64) -> Result<Option<u32>, PluginError> {
        Ok(None)
    }

    fn wait(&self, _handle: u64) -> Result<PluginExit, PluginError> {
        Err(PluginError::InvalidRequest {
            message: "no processes".into(),
        })
    }

    fn release(&self, _handle: u64) {}

    fn cleanup(&self, _container: ContainerRequest) -> Result<(), PluginError> {
        panic!("deliberate panic in cleanup");
    }
}

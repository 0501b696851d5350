//! The domain model of sidewhale and the traits its parts plug into.
//!
//! This crate knows nothing of HTTP or of any particular runtime. The
//! server translates Docker Engine API requests into these types, and the
//! crates behind the traits (image stores, executors, port forwarders) do
//! the work.

pub mod executor;
pub mod image;
pub mod ports;

pub use executor::{
    ContainerSpec, Executor, ExecutorError, ExitStatus, Mount, NetworkNamespace, Probe, Process,
    ProcessControl, ProcessSpec,
};
pub use image::{
    ImageConfig, ImageError, ImageRecord, ImageSource, PullProgress, Reference,
};
pub use ports::{
    ForwardError, PeerLookup, PortBinding, PortForwarder, PortRelocation, PortTarget, Protocol,
    PublishedPort, RelocatedPorts,
};

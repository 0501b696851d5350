//! Images for sidewhale: pulls from OCI distribution registries into a
//! content-addressed store, safe layer unpacking, and private container
//! root filesystems built from the stored layers.

mod digest;
pub mod fsutil;
mod manifest;
mod pull;
mod rootfs;
mod store;
mod unpack;

pub use store::{host_architecture, ImageStore, RegistryOptions, RemoveEvent};
pub use unpack::{owner_of, HardLink, LayerMetadata};

#[cfg(test)]
mod layer_tests;
#[cfg(test)]
mod store_tests;
#[cfg(test)]
mod testutil;

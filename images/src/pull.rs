//! Pulls from OCI distribution registries with Docker's progress messages.
//!
//! A pull resolves the manifest (trying Docker Hub mirrors first), fetches
//! the configuration, then downloads up to `CONCURRENT_DOWNLOADS` layer
//! blobs at a time while unpacking finished ones in order, base first.
//! Every blob is hashed while it streams to a temp file and enters the
//! store only when its digest matches.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use sha2::{Digest as _, Sha256};
use sidewhale_core::image::DOCKER_HUB;
use sidewhale_core::{ImageError, ImageRecord, ImageSource, PullProgress, Reference};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::digest::{require_sha256, sha256_of};
use crate::fsutil;
use crate::manifest::{self, Descriptor, ImageConfigBlob, ManifestDocument};
use crate::store::ImageStore;
use crate::unpack::{self, LayerMetadata};

/// Layer downloads running at once, Docker's default
/// (`max-concurrent-downloads`).
const CONCURRENT_DOWNLOADS: usize = 3;

/// Minimum time between two `Downloading` or `Extracting` updates of one
/// layer.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Time a blob or manifest response may stall between two reads.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

#[async_trait]
impl ImageSource for ImageStore {
    async fn pull(
        &self,
        reference: &Reference,
        progress: mpsc::Sender<PullProgress>,
    ) -> Result<ImageRecord, ImageError> {
        pull(self, reference, Reporter(progress)).await
    }
}

/// Sends progress messages, ignoring a receiver that has gone away: the
/// pull still completes, as `docker pull` does when the client
/// disconnects.
#[derive(Clone)]
struct Reporter(mpsc::Sender<PullProgress>);

impl Reporter {
    async fn send(&self, message: PullProgress) {
        let _ = self.0.send(message).await;
    }

    async fn layer(&self, id: &str, status: &str) {
        self.send(PullProgress::layer(id, status)).await;
    }

    async fn status(&self, status: String) {
        self.send(PullProgress::status(status)).await;
    }
}

/// A registry to pull one repository from: Docker Hub, a mirror of it, or
/// the registry the reference names.
#[derive(Clone)]
struct Endpoint {
    client: Client,
    /// The repository at this endpoint, without tag or digest.
    repository: oci_client::Reference,
    /// `mirror http://…` or `registry host`, for messages.
    label: String,
}

impl Endpoint {
    fn new(host: &str, plain_http: bool, reference: &Reference, label: String) -> Endpoint {
        let http_hosts = if plain_http {
            vec![host.to_string()]
        } else {
            Vec::new()
        };
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(http_hosts),
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            platform_resolver: None,
            ..ClientConfig::default()
        };
        let repository = oci_client::Reference::with_tag(
            host.to_string(),
            reference.repository.clone(),
            "latest".to_string(),
        );
        Endpoint {
            client: Client::new(config),
            repository,
            label,
        }
    }

    /// Returns this endpoint's reference for a tag or digest.
    fn at(&self, tag_or_digest: &str) -> oci_client::Reference {
        let registry = self.repository.registry().to_string();
        let repository = self.repository.repository().to_string();
        if tag_or_digest.starts_with("sha256:") {
            oci_client::Reference::with_digest(registry, repository, tag_or_digest.to_string())
        } else {
            oci_client::Reference::with_tag(registry, repository, tag_or_digest.to_string())
        }
    }
}

/// Lists the endpoints to try for `reference`, mirrors first.
fn endpoints(store: &ImageStore, reference: &Reference) -> Vec<Endpoint> {
    let options = &store.options;
    let mut list = Vec::new();
    if reference.registry == DOCKER_HUB {
        for mirror in &options.mirrors {
            let (host, plain_http) = match mirror.strip_prefix("http://") {
                Some(rest) => (rest, true),
                None => (mirror.strip_prefix("https://").unwrap_or(mirror), false),
            };
            let host = host.split('/').next().unwrap_or(host);
            let label = format!("mirror {mirror}");
            list.push(Endpoint::new(host, plain_http, reference, label));
        }
    }

    let host = reference.registry.as_str();
    let plain_http = options.insecure_registries.iter().any(|h| h == host) || is_loopback(host);
    list.push(Endpoint::new(
        host,
        plain_http,
        reference,
        format!("registry {host}"),
    ));
    list
}

/// Returns true for `localhost`, `127.0.0.0/8` and `[::1]`, with or
/// without a port, which Docker reaches over plain HTTP by default.
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.split(':').next().unwrap_or(host),
    };
    match name.parse::<std::net::IpAddr>() {
        Ok(address) => address.is_loopback(),
        Err(_) => name == "localhost",
    }
}

/// An image manifest and the digest `RepoDigests` records for it (that of
/// the manifest list when the reference named one).
struct ResolvedManifest {
    endpoint: Endpoint,
    digest: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

async fn pull(
    store: &ImageStore,
    reference: &Reference,
    reporter: Reporter,
) -> Result<ImageRecord, ImageError> {
    let started = Instant::now();
    let pull_id = reference
        .tag
        .clone()
        .or(reference.digest.clone())
        .unwrap_or_default();
    tracing::info!(reference = %reference, "pull started");
    let from = format!("Pulling from {}", reference.repository);
    reporter.send(PullProgress::layer(&pull_id, from)).await;

    let resolved = resolve_manifest(store, reference).await?;
    tracing::info!(reference = %reference, endpoint = %resolved.endpoint.label,
        digest = %resolved.digest, layers = resolved.layers.len(), "manifest resolved");

    let config_bytes = fetch_config(store, reference, &resolved).await?;
    let config: ImageConfigBlob = serde_json::from_slice(&config_bytes).map_err(|error| {
        registry_error(reference, format!("invalid image configuration: {error}"))
    })?;
    let diff_ids = config.rootfs.diff_ids.clone();
    if diff_ids.len() != resolved.layers.len() {
        let message = format!(
            "manifest lists {} layers but the configuration {} diff ids",
            resolved.layers.len(),
            diff_ids.len()
        );
        return Err(registry_error(reference, message));
    }
    for diff_id in &diff_ids {
        require_sha256(diff_id, &reference.to_string())?;
    }

    let id = resolved.config.digest.clone();
    let mut downloaded = 0;
    let sizes = if store.has_image(&id) {
        layer_sizes(store, &diff_ids)
    } else {
        store.pin_layers(&diff_ids);
        let mut result = pull_layers(store, reference, &resolved, &diff_ids, &reporter).await;
        if result.is_ok() {
            if let Err(error) = check_stack(store, &diff_ids).await {
                result = Err(error);
            }
        }
        store.unpin_layers(&diff_ids);
        if let Err(error) = &result {
            if matches!(error, ImageError::InvalidLayer { .. }) {
                tracing::warn!(reference = %reference, %error, "image rejected, removing its unused layers");
                store.discard_unused_layers(&diff_ids);
            }
        }
        let (sizes, count) = result?;
        downloaded = count;
        sizes
    };

    let record = ImageRecord {
        id: id.clone(),
        repo_tags: Vec::new(),
        repo_digests: vec![format!(
            "{}@{}",
            reference.familiar_repository(),
            resolved.digest
        )],
        created: config.created,
        architecture: config.architecture,
        os: config.os,
        config: config.config.unwrap_or_default(),
        layers: resolved
            .layers
            .iter()
            .map(|layer| layer.digest.clone())
            .collect(),
        diff_ids,
        size: sizes.iter().sum(),
        history: config.history,
    };
    let tag = reference.tag.as_ref().map(|_| reference);
    let outcome = store.commit_image(record, tag)?;

    reporter
        .status(format!("Digest: {}", resolved.digest))
        .await;
    let up_to_date = !outcome.new_image && !outcome.tag_changed && downloaded == 0;
    let status = if up_to_date {
        "Image is up to date for"
    } else {
        "Downloaded newer image for"
    };
    reporter
        .status(format!("Status: {status} {}", reference.familiar()))
        .await;

    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(reference = %reference, image = %id, layers_downloaded = downloaded,
        up_to_date, elapsed_ms, "pull finished");
    store.get(&id).ok_or(ImageError::NoSuchImage(id))
}

fn registry_error(reference: &Reference, message: String) -> ImageError {
    ImageError::Registry {
        reference: reference.to_string(),
        message,
    }
}

fn layer_sizes(store: &ImageStore, diff_ids: &[String]) -> Vec<u64> {
    diff_ids
        .iter()
        .map(|d| store.load_layer(d).map_or(0, |layer| layer.size))
        .collect()
}

/// Fetches the image manifest for `reference` from the first endpoint that
/// has it. Mirrors that fail are skipped. When every endpoint fails, the
/// error lists what each one returned.
async fn resolve_manifest(
    store: &ImageStore,
    reference: &Reference,
) -> Result<ResolvedManifest, ImageError> {
    let mut failures: Vec<(String, ImageError)> = Vec::new();
    for endpoint in endpoints(store, reference) {
        match fetch_manifest(&endpoint, reference, store).await {
            Ok(resolved) => return Ok(resolved),
            Err(error) => {
                tracing::warn!(reference = %reference, endpoint = %endpoint.label,
                    error = %error, "manifest fetch failed");
                // A digest or platform mismatch is a definite result, not an
                // unreachable endpoint, so no other endpoint is tried.
                if matches!(
                    error,
                    ImageError::DigestMismatch { .. } | ImageError::NoMatchingPlatform { .. }
                ) {
                    return Err(error);
                }
                failures.push((endpoint.label.clone(), error));
            }
        }
    }
    Err(combine_failures(reference, failures))
}

/// Picks the error to report when no endpoint served the manifest: "not
/// found" or "unauthorized" from any endpoint wins over a network error,
/// and a network error lists every endpoint tried.
fn combine_failures(reference: &Reference, failures: Vec<(String, ImageError)>) -> ImageError {
    let answered = failures.iter().position(|(_, error)| {
        matches!(error, ImageError::NotFound(_) | ImageError::Unauthorized(_))
    });
    let mut failures = failures;
    if let Some(index) = answered {
        return failures.swap_remove(index).1;
    }
    if failures.len() == 1 {
        if let Some((_, error)) = failures.pop() {
            return error;
        }
    }

    let tried: Vec<String> = failures
        .iter()
        .map(|(label, error)| format!("{label}: {error}"))
        .collect();
    let message = format!(
        "no registry could serve the image ({}); check that a configured mirror is running \
         and has the repository, or pull from a reachable registry",
        tried.join("; ")
    );
    registry_error(reference, message)
}

async fn fetch_manifest(
    endpoint: &Endpoint,
    reference: &Reference,
    store: &ImageStore,
) -> Result<ResolvedManifest, ImageError> {
    let requested = reference.digest.clone().or(reference.tag.clone());
    let requested = requested.unwrap_or_else(|| "latest".to_string());
    let (document, digest) = fetch_document(endpoint, reference, &requested).await?;
    if let Some(expected) = &reference.digest {
        if *expected != digest {
            return Err(ImageError::DigestMismatch {
                reference: reference.to_string(),
                expected: expected.clone(),
                actual: digest,
            });
        }
    }
    if !document.is_index() {
        return into_resolved(endpoint, reference, document, digest);
    }

    let (os, architecture) = &store.options.platform;
    let entries = document.manifests.unwrap_or_default();
    let entry = manifest::select_platform(&entries, os, architecture).ok_or_else(|| {
        ImageError::NoMatchingPlatform {
            reference: reference.familiar(),
            platform: format!("{os}/{architecture}"),
        }
    })?;
    require_sha256(&entry.digest, &reference.to_string())?;
    let (image_manifest, image_digest) = fetch_document(endpoint, reference, &entry.digest).await?;
    if image_digest != entry.digest {
        return Err(ImageError::DigestMismatch {
            reference: reference.to_string(),
            expected: entry.digest.clone(),
            actual: image_digest,
        });
    }
    if image_manifest.is_index() {
        let message = "a manifest list entry is itself a manifest list".to_string();
        return Err(registry_error(reference, message));
    }
    into_resolved(endpoint, reference, image_manifest, digest)
}

/// Fetches one manifest document and returns it with the sha256 digest of
/// its bytes.
async fn fetch_document(
    endpoint: &Endpoint,
    reference: &Reference,
    tag_or_digest: &str,
) -> Result<(ManifestDocument, String), ImageError> {
    let target = endpoint.at(tag_or_digest);
    let (body, _) = endpoint
        .client
        .pull_manifest_raw(
            &target,
            &RegistryAuth::Anonymous,
            manifest::ACCEPTED_MANIFESTS,
        )
        .await
        .map_err(|error| map_registry_error(error, reference))?;
    let digest = sha256_of(&body);
    let document: ManifestDocument = serde_json::from_slice(&body)
        .map_err(|error| registry_error(reference, format!("invalid manifest: {error}")))?;
    if document.schema_version != 2 {
        let message = format!(
            "manifest schema version {} is not supported; only schema 2 and OCI manifests are",
            document.schema_version
        );
        return Err(registry_error(reference, message));
    }
    Ok((document, digest))
}

fn into_resolved(
    endpoint: &Endpoint,
    reference: &Reference,
    document: ManifestDocument,
    digest: String,
) -> Result<ResolvedManifest, ImageError> {
    let name = reference.to_string();
    let config = document
        .config
        .ok_or_else(|| registry_error(reference, "manifest has no config".to_string()))?;
    require_sha256(&config.digest, &name)?;
    let layers = document.layers.unwrap_or_default();
    for layer in &layers {
        require_sha256(&layer.digest, &name)?;
    }
    Ok(ResolvedManifest {
        endpoint: endpoint.clone(),
        digest,
        config,
        layers,
    })
}

/// Returns the configuration blob, from the store or else downloaded and
/// stored.
async fn fetch_config(
    store: &ImageStore,
    reference: &Reference,
    resolved: &ResolvedManifest,
) -> Result<Vec<u8>, ImageError> {
    let hex = require_sha256(&resolved.config.digest, &reference.to_string())?;
    let path = store.blob_path(hex);
    if !path.exists() {
        let download = BlobDownload {
            endpoint: resolved.endpoint.clone(),
            reference: reference.clone(),
            descriptor: resolved.config.clone(),
            temp: store.temp_path("blob"),
            dest: path.clone(),
            progress: None,
        };
        download.run().await?;
    }
    tokio::fs::read(&path).await.map_err(|error| {
        ImageError::io(
            format!("read configuration {}", resolved.config.digest),
            error,
        )
    })
}

/// Returns the first 12 hex digits of a digest, Docker's short layer id.
fn short_id(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(12).collect()
}

/// Aborts the download tasks of a pull that failed or was cancelled.
struct AbortOnDrop(Vec<JoinHandle<Result<(), ImageError>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

/// Downloads and unpacks the layers not yet in the store. Returns every
/// layer's unpacked size and the number of layers downloaded.
async fn pull_layers(
    store: &ImageStore,
    reference: &Reference,
    resolved: &ResolvedManifest,
    diff_ids: &[String],
    reporter: &Reporter,
) -> Result<(Vec<u64>, usize), ImageError> {
    let mut sizes = vec![0; diff_ids.len()];
    let mut missing = Vec::new();
    for (index, (layer, diff_id)) in resolved.layers.iter().zip(diff_ids).enumerate() {
        let id = short_id(&layer.digest);
        match store.load_layer(diff_id) {
            Some(existing) => {
                sizes[index] = existing.size;
                tracing::info!(layer = %layer.digest, %diff_id, "layer reused");
                reporter.layer(&id, "Already exists").await;
            }
            None => {
                reporter.layer(&id, "Pulling fs layer").await;
                missing.push(index);
            }
        }
    }
    for index in missing.iter().skip(CONCURRENT_DOWNLOADS) {
        reporter
            .layer(&short_id(&resolved.layers[*index].digest), "Waiting")
            .await;
    }

    let semaphore = Arc::new(Semaphore::new(CONCURRENT_DOWNLOADS));
    let mut tasks = AbortOnDrop(Vec::new());
    for &index in &missing {
        let layer = &resolved.layers[index];
        let hex = require_sha256(&layer.digest, &reference.to_string())?;
        let download = BlobDownload {
            endpoint: resolved.endpoint.clone(),
            reference: reference.clone(),
            descriptor: layer.clone(),
            temp: store.temp_path("blob"),
            dest: store.blob_path(hex),
            progress: Some(reporter.clone()),
        };
        let semaphore = semaphore.clone();
        tasks.0.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            download.run().await
        }));
    }

    for (task, &index) in tasks.0.iter_mut().zip(&missing) {
        let joined = task.await.map_err(|error| {
            registry_error(reference, format!("layer download task failed: {error}"))
        })?;
        joined?;
        let layer = &resolved.layers[index];
        let metadata = unpack_into_store(store, layer, &diff_ids[index], reporter).await?;
        sizes[index] = metadata.size;
        reporter
            .layer(&short_id(&layer.digest), "Pull complete")
            .await;
    }
    Ok((sizes, missing.len()))
}

/// One blob streamed from a registry into the store.
struct BlobDownload {
    endpoint: Endpoint,
    reference: Reference,
    descriptor: Descriptor,
    temp: PathBuf,
    dest: PathBuf,
    /// Receiver of `Downloading` messages, `None` for the configuration.
    progress: Option<Reporter>,
}

impl BlobDownload {
    /// Downloads the blob unless the store has it, verifying its digest.
    /// On any failure the temp file is removed and the store is unchanged.
    async fn run(self) -> Result<(), ImageError> {
        let id = short_id(&self.descriptor.digest);
        if self.dest.exists() {
            self.report(&id, "Download complete", None).await;
            return Ok(());
        }
        let started = Instant::now();
        let result = self.stream_to_temp(&id).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&self.temp).await;
        }
        let size = result?;

        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(blob = %self.descriptor.digest, size, elapsed_ms, "blob downloaded");
        self.report(&id, "Download complete", None).await;
        Ok(())
    }

    async fn stream_to_temp(&self, id: &str) -> Result<u64, ImageError> {
        let digest = &self.descriptor.digest;
        let io_error = |error| ImageError::io(format!("download blob {digest}"), error);
        let descriptor = OciDescriptor {
            digest: digest.clone(),
            urls: self.descriptor.urls.clone(),
            ..OciDescriptor::default()
        };
        let target = self.endpoint.at(digest);
        let mut stream = self
            .endpoint
            .client
            .pull_blob_stream(&target, &descriptor)
            .await
            .map_err(|error| map_registry_error(error, &self.reference))?;
        let total = match self.descriptor.size {
            0 => stream.content_length,
            size => Some(size),
        };

        let file = tokio::fs::File::create(&self.temp)
            .await
            .map_err(io_error)?;
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Sha256::new();
        let mut current = 0u64;
        let mut last_report: Option<Instant> = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // oci-client checks the digest at the end of the stream;
                // the check below reports a mismatch with both digests.
                Err(error) if is_digest_error(&error) => break,
                Err(error) => {
                    let message = format!("download of blob {digest} failed: {error}");
                    return Err(registry_error(&self.reference, message));
                }
            };
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_error)?;
            current += chunk.len() as u64;
            if last_report.is_none_or(|at| at.elapsed() >= PROGRESS_INTERVAL) {
                last_report = Some(Instant::now());
                self.report(id, "Downloading", Some((current, total))).await;
            }
        }
        self.report(id, "Verifying Checksum", None).await;
        file.flush().await.map_err(io_error)?;
        file.get_ref().sync_all().await.map_err(io_error)?;
        drop(file);

        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != *digest {
            tracing::warn!(blob = %digest, %actual, "blob digest mismatch, discarded");
            return Err(ImageError::DigestMismatch {
                reference: self.reference.to_string(),
                expected: digest.clone(),
                actual,
            });
        }
        self.commit().map_err(io_error)?;
        Ok(current)
    }

    /// Moves the verified temp file to its place in `blobs/`.
    fn commit(&self) -> std::io::Result<()> {
        std::fs::rename(&self.temp, &self.dest)?;
        let blobs = self.dest.parent().unwrap_or(Path::new("."));
        fsutil::sync_dir(blobs)
    }

    async fn report(&self, id: &str, status: &str, counts: Option<(u64, Option<u64>)>) {
        let Some(reporter) = &self.progress else {
            return;
        };
        let mut message = PullProgress::layer(id, status);
        if let Some((current, total)) = counts {
            message.current = Some(current);
            message.total = total;
        }
        reporter.send(message).await;
    }
}

fn is_digest_error(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<DigestError>().is_some())
}

/// Checks on a blocking thread that the stored layers `diff_ids` stack
/// into a rootfs without leaving it.
async fn check_stack(store: &ImageStore, diff_ids: &[String]) -> Result<(), ImageError> {
    let check = store.stack_check(diff_ids)?;
    match tokio::task::spawn_blocking(move || check.run()).await {
        Ok(result) => result,
        Err(error) => Err(ImageError::io(
            "check layer stack",
            std::io::Error::other(error),
        )),
    }
}

/// Unpacks a downloaded layer blob into a temp directory, checks its diff
/// id and moves it into the store.
async fn unpack_into_store(
    store: &ImageStore,
    layer: &Descriptor,
    diff_id: &str,
    reporter: &Reporter,
) -> Result<LayerMetadata, ImageError> {
    let started = Instant::now();
    let hex = require_sha256(&layer.digest, diff_id)?;
    let blob = store.blob_path(hex);
    let temp = store.temp_path("layer");
    let job = UnpackJob {
        blob,
        temp: temp.clone(),
        layer_digest: layer.digest.clone(),
        diff_id: diff_id.to_string(),
        total: layer.size,
        reporter: reporter.clone(),
    };
    let result = tokio::task::spawn_blocking(move || job.run()).await;
    let result = match result {
        Ok(result) => result,
        Err(error) => Err(ImageError::io("unpack layer", std::io::Error::other(error))),
    };
    let metadata = match result {
        Ok(metadata) => metadata,
        Err(error) => {
            let _ = fsutil::remove_tree(&temp);
            return Err(error);
        }
    };

    store
        .commit_layer(&temp, diff_id)
        .map_err(|error| ImageError::io(format!("store layer {diff_id}"), error))?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(layer = %layer.digest, %diff_id, size = metadata.size, elapsed_ms,
        skipped = metadata.skipped.len(), "layer unpacked");
    Ok(metadata)
}

/// The blocking part of unpacking one layer, run on tokio's blocking pool.
struct UnpackJob {
    blob: PathBuf,
    temp: PathBuf,
    layer_digest: String,
    diff_id: String,
    total: u64,
    reporter: Reporter,
}

impl UnpackJob {
    fn run(self) -> Result<LayerMetadata, ImageError> {
        let io_error = |error| ImageError::io(format!("unpack layer {}", self.layer_digest), error);
        let diff = self.temp.join("diff");
        std::fs::create_dir_all(&diff).map_err(io_error)?;

        let id = short_id(&self.layer_digest);
        let mut last_report: Option<Instant> = None;
        let mut on_progress = |current: u64| {
            if last_report.is_some_and(|at| at.elapsed() < PROGRESS_INTERVAL) {
                return;
            }
            last_report = Some(Instant::now());
            let mut message = PullProgress::layer(&id, "Extracting");
            message.current = Some(current);
            message.total = Some(self.total);
            let _ = self.reporter.0.blocking_send(message);
        };
        let metadata =
            unpack::unpack_layer(&self.blob, &diff, &self.layer_digest, &mut on_progress)?;
        if metadata.diff_id != self.diff_id {
            return Err(ImageError::DigestMismatch {
                reference: format!("diff id of layer {}", self.layer_digest),
                expected: self.diff_id.clone(),
                actual: metadata.diff_id,
            });
        }

        // Written last: its presence marks the layer complete. syncfs
        // flushes the unpacked files too, before the rename publishes them.
        let json = serde_json::to_vec_pretty(&metadata).map_err(|e| io_error(e.into()))?;
        std::fs::write(self.temp.join("layer.json"), json).map_err(io_error)?;
        fsutil::sync_file_system(&self.temp).map_err(io_error)?;
        Ok(metadata)
    }
}

/// Maps an oci-client error to the store's error for `reference`.
fn map_registry_error(error: OciDistributionError, reference: &Reference) -> ImageError {
    let not_found = || ImageError::NotFound(reference.familiar());
    let unauthorized = || ImageError::Unauthorized(reference.familiar_repository());
    match &error {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => unauthorized(),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let is = |wanted: &[OciErrorCode]| codes.iter().any(|code| wanted.contains(code));
            if is(&[
                OciErrorCode::ManifestUnknown,
                OciErrorCode::NameUnknown,
                OciErrorCode::BlobUnknown,
                OciErrorCode::NotFound,
            ]) {
                not_found()
            } else if is(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                unauthorized()
            } else {
                registry_error(reference, error.to_string())
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => not_found(),
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => unauthorized(),
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            ImageError::DigestMismatch {
                reference: reference.to_string(),
                expected: expected.clone(),
                actual: actual.clone(),
            }
        }
        _ => registry_error(reference, error_chain(&error)),
    }
}

/// Formats an error with its sources, which for a network failure hold
/// the useful part ("connection refused", "dns error").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_use_plain_http() {
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("127.0.0.1:5099"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example:5000"));
        assert!(!is_loopback("docker.io"));
    }

    #[test]
    fn unreachable_endpoints_are_all_named() {
        let reference = Reference::parse("redis:7").unwrap();
        let failures = vec![
            (
                "mirror http://127.0.0.1:1".to_string(),
                registry_error(&reference, "connection refused".into()),
            ),
            (
                "registry docker.io".to_string(),
                registry_error(&reference, "dns error".into()),
            ),
        ];
        let message = combine_failures(&reference, failures).to_string();
        assert!(message.contains("mirror http://127.0.0.1:1"), "{message}");
        assert!(message.contains("registry docker.io: "), "{message}");
        assert!(message.contains("dns error"), "{message}");
    }

    #[test]
    fn not_found_wins_over_network_errors() {
        let reference = Reference::parse("redis:7").unwrap();
        let failures = vec![
            (
                "mirror http://127.0.0.1:1".to_string(),
                ImageError::NotFound("redis:7".into()),
            ),
            (
                "registry docker.io".to_string(),
                registry_error(&reference, "dns error".into()),
            ),
        ];
        assert!(matches!(
            combine_failures(&reference, failures),
            ImageError::NotFound(_)
        ));
    }
}

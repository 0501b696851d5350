//! `POST /containers/create`: merging the request with the image, choosing
//! the executor and laying out the container's directory.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::Rng;
use serde_json::Value;
use sidewhale_core::{ImageConfig, ImageRecord, PortBinding, Protocol, Reference};

use super::model::{ContainerConfig, ContainerRecord, CreateRequest, HostConfigRequest, State};
use super::restart::{Policy, RestartPolicy};
use super::{files, ryuk, Container, Daemon, Error, Result};

/// Docker's runtime name; clients that send it mean "the default".
const DOCKER_DEFAULT_RUNTIME: &str = "runc";

/// The Docker socket paths that clients bind into containers, redirected
/// to sidewhale's own socket.
const DOCKER_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];

impl Daemon {
    /// Creates a container and returns its id.
    pub async fn create_container(
        &self,
        name: Option<&str>,
        request: CreateRequest,
    ) -> Result<String> {
        let name = match name.filter(|name| !name.is_empty()) {
            Some(name) => validate_name(name)?,
            None => self.unused_name(),
        };
        let image_name = request
            .config
            .image
            .clone()
            .filter(|image| !image.is_empty())
            .ok_or_else(|| Error::InvalidParameter("config.Image is required".into()))?;
        validate_config(&request.config)?;
        // Ryuk containers are served by sidewhale itself, without the image.
        let is_ryuk = ryuk::is_ryuk_image(&image_name);
        let image = if is_ryuk {
            ryuk::image_record(&image_name)
        } else {
            self.images.get(&image_name).ok_or_else(|| match Reference::parse(&image_name) {
                Ok(reference) => {
                    Error::NotFound(format!("No such image: {}", reference.familiar()))
                }
                Err(error) => Error::InvalidParameter(error.to_string()),
            })?
        };

        let host_config_value = request.host_config.clone().unwrap_or(Value::Null);
        let mut host_config: HostConfigRequest = if host_config_value.is_null() {
            HostConfigRequest::default()
        } else {
            serde_json::from_value(host_config_value.clone())
                .map_err(|error| Error::InvalidParameter(format!("invalid HostConfig: {error}")))?
        };
        let restart = RestartPolicy::parse(&host_config_value["RestartPolicy"])?;
        if host_config.auto_remove.unwrap_or(false) && restart.policy != Policy::No {
            return Err(Error::InvalidParameter(
                "can't create 'AutoRemove' container with restart policy".into(),
            ));
        }
        self.redirect_docker_socket(&mut host_config)?;
        let endpoints =
            self.plan_endpoints(&host_config_value, request.networking_config.as_ref())?;

        let config = merge_image_config(request.config, &image.config);
        if config.entrypoint.as_ref().is_none_or(Vec::is_empty)
            && config.cmd.as_ref().is_none_or(Vec::is_empty)
        {
            return Err(Error::InvalidParameter("No command specified".into()));
        }
        let mut port_bindings = parse_port_bindings(&host_config)?;
        if host_config.publish_all_ports.unwrap_or(false) {
            publish_all(&config, &mut port_bindings)?;
        }
        let runtime = if is_ryuk {
            ryuk::RUNTIME.to_string()
        } else {
            self.choose_runtime(&host_config, &image_name)?
        };

        let mut record = ContainerRecord {
            id: String::new(),
            name,
            created: chrono::Utc::now(),
            image: image_name,
            image_id: image.id.clone(),
            config,
            host_config: filled_host_config(host_config_value, &runtime),
            port_bindings,
            auto_remove: host_config.auto_remove.unwrap_or(false),
            runtime,
            mounts: Vec::new(),
            state: State::created(),
            ports: Vec::new(),
            restart_count: 0,
            networks: BTreeMap::new(),
        };
        let (id, dir) = self.reserve(&mut record)?;
        let result = match is_ryuk {
            true => Ok(()),
            false => self.lay_out(&dir, &image, &mut record, &host_config).await,
        };
        if let Err(error) = result {
            self.write_containers().remove(&id);
            let _ = self.images.remove_rootfs(&dir);
            return Err(error);
        }

        let container = self.container(&id)?;
        container.update(|stored| *stored = record);
        if let Err(error) = self.attach_planned(&container, endpoints) {
            self.write_containers().remove(&id);
            let _ = self.images.remove_rootfs(&dir);
            return Err(error);
        }
        if !is_ryuk {
            let spec = self.container_spec(&container);
            let executor = self.executor(&container.record().runtime)?;
            executor.prepare(&spec).await?;
        }
        tracing::info!(container = %&id[..12], name = %container.record().name, "created container");
        self.container_event(&container.record(), "create", &[]);
        Ok(id)
    }

    /// Picks a fresh id and claims the name, so that two concurrent
    /// creates with the same name cannot both succeed.
    fn reserve(&self, record: &mut ContainerRecord) -> Result<(String, PathBuf)> {
        let mut containers = self.write_containers();
        if let Some(existing) = containers.values().find(|c| c.lock().name == record.name) {
            return Err(Error::Conflict(format!(
                "Conflict. The container name \"/{}\" is already in use by container \"{}\". \
                 You have to remove (or rename) that container to be able to reuse that name.",
                record.name, existing.id
            )));
        }
        let (id, dir) = loop {
            let id = hex::encode(rand::thread_rng().gen::<[u8; 32]>());
            let dir = self.containers_dir.join(&id[..12]);
            if !dir.exists() {
                break (id, dir);
            }
        };
        std::fs::create_dir_all(&dir)
            .map_err(|error| Error::internal("failed to create the container directory", error))?;
        record.id = id.clone();
        let container = Arc::new(Container::new(dir.clone(), record.clone()));
        containers.insert(id.clone(), container);
        Ok((id, dir))
    }

    async fn lay_out(
        &self,
        dir: &Path,
        image: &ImageRecord,
        record: &mut ContainerRecord,
        host_config: &HostConfigRequest,
    ) -> Result<()> {
        let images = self.images.clone();
        let image_id = image.id.clone();
        let rootfs = dir.join("rootfs");
        tokio::task::spawn_blocking(move || images.create_rootfs(&image_id, &rootfs))
            .await
            .map_err(|error| Error::internal("rootfs task failed", error))??;
        files::write_network_files(dir, record)
            .map_err(|error| Error::internal("failed to write /etc files", error))?;
        let mut volumes: Vec<String> = image
            .config
            .volumes
            .iter()
            .flatten()
            .map(|(path, _)| path.clone())
            .collect();
        volumes.extend(
            record
                .config
                .volumes
                .iter()
                .flatten()
                .map(|(path, _)| path.clone()),
        );
        record.mounts = self.create_mounts(&record.id, dir, host_config, &volumes)?;
        Ok(())
    }

    /// Points binds of the Docker socket at sidewhale's own socket, so that
    /// a container that drives Docker through it reaches this server.
    /// Rejects a source that is a URL, such as `tcp://…`, as Docker does.
    fn redirect_docker_socket(&self, host_config: &mut HostConfigRequest) -> Result<()> {
        let own = self.config.unix_socket();
        let is_docker_socket =
            |source: &str| DOCKER_SOCKETS.contains(&source) || Path::new(source) == own;
        for bind in host_config.binds.iter_mut().flatten() {
            if bind.contains("://") {
                return Err(Error::InvalidParameter(format!(
                    "invalid volume specification: '{bind}'"
                )));
            }
            let Some((source, rest)) = bind.split_once(':') else {
                continue;
            };
            if is_docker_socket(source) {
                tracing::debug!(bind = %bind, socket = %own.display(), "redirecting a Docker socket bind");
                *bind = format!("{}:{rest}", own.display());
            }
        }
        for mount in host_config.mounts.iter_mut().flatten() {
            let Some(source) = mount.source.as_mut() else {
                continue;
            };
            if source.contains("://") {
                return Err(Error::InvalidParameter(format!(
                    "invalid mount config for type \"bind\": invalid volume specification: '{source}'"
                )));
            }
            if mount.kind.as_deref() == Some("bind") && is_docker_socket(source) {
                *source = own.display().to_string();
            }
        }
        Ok(())
    }

    /// Chooses the executor: the request's `Runtime`, then the first
    /// configured rule matching the image, then the default.
    fn choose_runtime(&self, host_config: &HostConfigRequest, image: &str) -> Result<String> {
        let requested = host_config
            .runtime
            .as_deref()
            .filter(|runtime| !runtime.is_empty() && *runtime != DOCKER_DEFAULT_RUNTIME);
        let runtime = match requested {
            Some(runtime) => runtime.to_string(),
            None => {
                let reference = Reference::parse(image)
                    .map(|reference| reference.to_string())
                    .unwrap_or_else(|_| image.to_string());
                self.config.executor_for_image(&reference).to_string()
            }
        };
        self.executor(&runtime)?;
        Ok(runtime)
    }

    /// Generates a Docker-style `adjective_surname` name not yet in use.
    fn unused_name(&self) -> String {
        const ADJECTIVES: &[&str] = &[
            "brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry",
            "nimble", "quiet", "sharp", "swift", "tender", "vivid", "wise", "zealous",
        ];
        const SURNAMES: &[&str] = &[
            "babbage", "curie", "darwin", "euler", "faraday", "gauss", "hopper", "kepler",
            "lovelace", "noether", "pascal", "ritchie", "shannon", "turing", "volta", "wozniak",
        ];
        let mut random = rand::thread_rng();
        loop {
            let adjective = ADJECTIVES[random.gen_range(0..ADJECTIVES.len())];
            let surname = SURNAMES[random.gen_range(0..SURNAMES.len())];
            let mut name = format!("{adjective}_{surname}");
            if self.container(&name).is_ok() {
                name.push_str(&random.gen_range(0..100).to_string());
            }
            if self.container(&name).is_err() {
                return name;
            }
        }
    }
}

/// Rejects what Docker rejects at create rather than at start: a stop
/// signal it cannot parse, a relative working directory, an environment
/// entry without a name, and NUL bytes, which no process argument can hold.
fn validate_config(config: &ContainerConfig) -> Result<()> {
    if let Some(signal) = config.stop_signal.as_deref().filter(|signal| !signal.is_empty()) {
        super::parse_signal(signal)?;
    }
    super::health::parse(config)?;
    if let Some(dir) = config.working_dir.as_deref().filter(|dir| !dir.is_empty()) {
        if !dir.starts_with('/') {
            return Err(Error::InvalidParameter(format!(
                "the working directory '{dir}' is invalid, it needs to be an absolute path"
            )));
        }
    }
    for entry in config.env.iter().flatten() {
        if entry.is_empty() || entry.starts_with('=') {
            return Err(Error::InvalidParameter(format!(
                "invalid environment variable: {entry:?}"
            )));
        }
    }
    let strings = config
        .cmd
        .iter()
        .chain(config.entrypoint.iter())
        .chain(config.env.iter())
        .flatten()
        .chain(config.working_dir.iter())
        .chain(config.user.iter());
    for text in strings {
        if text.contains('\0') {
            return Err(Error::InvalidParameter(format!(
                "invalid argument {text:?}: contains a NUL byte"
            )));
        }
    }
    Ok(())
}

pub(super) fn validate_name(name: &str) -> Result<String> {
    let name = name.strip_prefix('/').unwrap_or(name);
    let mut chars = name.chars();
    let first_valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_valid = chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if name.len() < 2 || !first_valid || !rest_valid {
        return Err(Error::InvalidParameter(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    Ok(name.to_string())
}

/// Fills what the request leaves out from the image, with Docker's rules:
/// a request entrypoint replaces the image's entrypoint and command, a
/// request command replaces only the command, and environment variables
/// and labels are merged with the request winning.
fn merge_image_config(mut config: ContainerConfig, image: &ImageConfig) -> ContainerConfig {
    if config.entrypoint.as_ref().is_none_or(Vec::is_empty) {
        if config.cmd.as_ref().is_none_or(Vec::is_empty) {
            config.cmd = image.cmd.clone();
        }
        if config.entrypoint.is_none() {
            config.entrypoint = image.entrypoint.clone();
        }
    }
    // An entrypoint of `[""]` is how the docker CLI clears the image's.
    if config.entrypoint.as_deref() == Some(&[String::new()][..]) {
        config.entrypoint = Some(Vec::new());
    }

    let mut env = image.env.clone().unwrap_or_default();
    for entry in config.env.take().unwrap_or_default() {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        env.retain(|existing| existing.split('=').next() != Some(key.as_str()));
        env.push(entry);
    }
    config.env = Some(env);

    let mut labels: BTreeMap<String, String> = image.labels.clone().unwrap_or_default();
    labels.extend(config.labels.take().unwrap_or_default());
    config.labels = Some(labels);

    let mut exposed = image.exposed_ports.clone().unwrap_or_default();
    exposed.extend(config.exposed_ports.take().unwrap_or_default());
    config.exposed_ports = (!exposed.is_empty()).then_some(exposed);

    let empty = |value: &Option<String>| value.as_deref().is_none_or(str::is_empty);
    if empty(&config.working_dir) {
        config.working_dir = image.working_dir.clone();
    }
    if empty(&config.user) {
        config.user = image.user.clone();
    }
    if empty(&config.stop_signal) {
        config.stop_signal = image.stop_signal.clone();
    }
    if config.healthcheck.is_none() {
        config.healthcheck = image.healthcheck.clone();
    }
    if config.volumes.is_none() {
        config.volumes = image.volumes.clone();
    }
    config
}

/// Parses a Docker port key, `6379/tcp` or `6379`.
fn parse_port_key(key: &str) -> Result<(u16, Protocol)> {
    let invalid = || Error::InvalidParameter(format!("invalid port specification: \"{key}\""));
    let (port, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
    let protocol = Protocol::parse(protocol).ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if port == 0 {
        return Err(invalid());
    }
    Ok((port, protocol))
}

fn parse_port_bindings(host_config: &HostConfigRequest) -> Result<Vec<PortBinding>> {
    let mut bindings = Vec::new();
    for (key, entries) in host_config.port_bindings.iter().flatten() {
        let (container_port, protocol) = parse_port_key(key)?;
        let entries = entries.clone().filter(|entries| !entries.is_empty());
        for entry in entries.unwrap_or_else(|| vec![Default::default()]) {
            let host_ip = match entry.host_ip.as_deref() {
                None | Some("") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Some(text) => text.parse().map_err(|_| {
                    Error::InvalidParameter(format!("invalid IP address in port binding: {text}"))
                })?,
            };
            let host_port = match entry.host_port.as_deref() {
                None | Some("") => 0,
                Some(text) => {
                    // A range such as 8000-8010 requests any port in it,
                    // and sidewhale takes its first port.
                    let first = text.split('-').next().unwrap_or(text);
                    first.parse::<u16>().map_err(|_| {
                        Error::InvalidParameter(format!(
                            "invalid host port in port binding: {text}"
                        ))
                    })?
                }
            };
            bindings.push(PortBinding {
                container_port,
                protocol,
                host_ip,
                host_port,
            });
        }
    }
    Ok(bindings)
}

/// Adds an ephemeral binding for every exposed port not yet bound, as
/// `PublishAllPorts` requests.
fn publish_all(config: &ContainerConfig, bindings: &mut Vec<PortBinding>) -> Result<()> {
    for key in config.exposed_ports.iter().flat_map(|ports| ports.keys()) {
        let (container_port, protocol) = parse_port_key(key)?;
        let bound = bindings.iter().any(|binding| {
            binding.container_port == container_port && binding.protocol == protocol
        });
        if !bound {
            bindings.push(PortBinding {
                container_port,
                protocol,
                host_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                host_port: 0,
            });
        }
    }
    Ok(())
}

/// Returns the `HostConfig` for inspect: the request's, with the chosen
/// runtime and Docker's defaults for the fields clients read.
fn filled_host_config(value: Value, runtime: &str) -> Value {
    let mut object = match value {
        Value::Object(object) => object,
        _ => serde_json::Map::new(),
    };
    object.insert("Runtime".into(), Value::String(runtime.to_string()));
    let defaults = [
        ("NetworkMode", serde_json::json!("default")),
        ("PortBindings", serde_json::json!({})),
        (
            "RestartPolicy",
            serde_json::json!({"Name": "no", "MaximumRetryCount": 0}),
        ),
        ("AutoRemove", serde_json::json!(false)),
        ("Privileged", serde_json::json!(false)),
        ("PublishAllPorts", serde_json::json!(false)),
        ("Binds", Value::Null),
        (
            "LogConfig",
            serde_json::json!({"Type": "json-file", "Config": {}}),
        ),
    ];
    for (key, default) in defaults {
        let entry = object.entry(key).or_insert(Value::Null);
        if entry.is_null() {
            *entry = default;
        }
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_config() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(vec!["docker-entrypoint.sh".into()]),
            cmd: Some(vec!["redis-server".into()]),
            env: Some(vec!["PATH=/usr/bin".into(), "A=1".into()]),
            ..ImageConfig::default()
        }
    }

    #[test]
    fn merge_keeps_image_defaults() {
        let merged = merge_image_config(ContainerConfig::default(), &image_config());
        assert_eq!(merged.entrypoint.unwrap(), vec!["docker-entrypoint.sh"]);
        assert_eq!(merged.cmd.unwrap(), vec!["redis-server"]);
    }

    #[test]
    fn merge_request_cmd_replaces_only_cmd() {
        let request = ContainerConfig {
            cmd: Some(vec!["x".into()]),
            ..Default::default()
        };
        let merged = merge_image_config(request, &image_config());
        assert_eq!(merged.entrypoint.unwrap(), vec!["docker-entrypoint.sh"]);
        assert_eq!(merged.cmd.unwrap(), vec!["x"]);
    }

    #[test]
    fn merge_request_entrypoint_drops_image_cmd() {
        let request = ContainerConfig {
            entrypoint: Some(vec!["sh".into()]),
            ..Default::default()
        };
        let merged = merge_image_config(request, &image_config());
        assert_eq!(merged.entrypoint.unwrap(), vec!["sh"]);
        assert!(merged.cmd.is_none());
    }

    #[test]
    fn merge_env_request_wins() {
        let request = ContainerConfig {
            env: Some(vec!["A=2".into()]),
            ..Default::default()
        };
        let merged = merge_image_config(request, &image_config());
        assert_eq!(merged.env.unwrap(), vec!["PATH=/usr/bin", "A=2"]);
    }

    #[test]
    fn port_bindings_parse() {
        let host_config: HostConfigRequest = serde_json::from_value(serde_json::json!({
            "PortBindings": {"6379/tcp": [{"HostIp": "", "HostPort": ""}], "80": [{"HostPort": "8080"}]}
        }))
        .unwrap();
        let bindings = parse_port_bindings(&host_config).unwrap();
        assert_eq!(bindings.len(), 2);
        assert!(bindings
            .iter()
            .any(|b| b.container_port == 6379 && b.host_port == 0));
        assert!(bindings
            .iter()
            .any(|b| b.container_port == 80 && b.host_port == 8080));
    }

    #[test]
    fn names_are_validated() {
        assert_eq!(validate_name("/web-1").unwrap(), "web-1");
        assert!(validate_name("a").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a b").is_err());
    }
}

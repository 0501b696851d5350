//! sidewhale's configuration.
//!
//! Values come from four layers, each overriding the one before: built-in
//! defaults, a TOML file, `SIDEWHALE_*` environment variables, and the
//! command line. Nested keys use a double underscore in the environment:
//! `SIDEWHALE_EXECUTOR__DEFAULT=proot`. Lists use TOML's array syntax there:
//! `SIDEWHALE_REGISTRY_MIRRORS='["http://127.0.0.1:5000"]'`.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The port Docker clients use for an unencrypted daemon is 2375; sidewhale
/// listens on a neighbour of it so that both can run on one host.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:23750";

/// Top-level keys, the only `SIDEWHALE_*` variables read as configuration.
/// Others, such as `SIDEWHALE_LOG` (the log filter), are left alone.
const KEYS: &[&str] = &[
    "listen",
    "listen_unix",
    "state_dir",
    "registry_mirrors",
    "insecure_registries",
    "executor",
    "network",
];

fn is_config_key(key: &figment::value::UncasedStr) -> bool {
    let top = key.as_str().split("__").next().unwrap_or_default();
    KEYS.iter().any(|known| known.eq_ignore_ascii_case(top))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// TCP addresses to serve the Docker Engine API on, as `HOST:PORT`.
    /// Empty serves the unix socket alone.
    pub listen: Vec<String>,
    /// Unix socket to serve the API on; `<state_dir>/docker.sock` when
    /// unset.
    pub listen_unix: Option<PathBuf>,
    /// Directory of images, containers and logs.
    pub state_dir: PathBuf,
    /// Registries tried before Docker Hub for `docker.io` images, as URLs
    /// (`http://` is allowed).
    pub registry_mirrors: Vec<String>,
    /// Registries (`HOST:PORT`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub executor: ExecutorConfig,
    #[serde(default)]
    pub network: NetworkConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Whether each container gets its own network namespace.
    #[serde(default)]
    pub isolation: NetworkIsolation,
}

/// The `network.isolation` key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkIsolation {
    /// As root, a network namespace per container where the host allows
    /// one. Otherwise, and as any other user, the host's network.
    #[default]
    Auto,
    /// A network namespace per container, inside a user namespace when not
    /// root. Start-up fails where the host cannot create one.
    Namespace,
    /// Every container shares the host's network.
    Host,
}

impl NetworkIsolation {
    pub fn as_str(&self) -> &'static str {
        match self {
            NetworkIsolation::Auto => "auto",
            NetworkIsolation::Namespace => "namespace",
            NetworkIsolation::Host => "host",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// The executor used when neither the request nor a rule names one.
    pub default: String,
    /// Path of the `proot` binary; looked up on `PATH` when unset.
    pub proot_path: Option<PathBuf>,
    /// Image rules, tried in order; the first whose glob matches the
    /// normalised image reference chooses the executor.
    #[serde(default)]
    pub rules: Vec<ExecutorRule>,
    /// Executor plugin libraries to load at start-up, in order.
    #[serde(default)]
    pub plugins: Vec<PathBuf>,
    /// A directory whose `*.so` files are loaded as executor plugins, in
    /// name order, after `plugins`.
    #[serde(default)]
    pub plugin_dir: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorRule {
    /// A glob over the normalised reference, such as
    /// `docker.io/library/postgres:*`. `*` matches any run of characters.
    pub image: String,
    pub executor: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![DEFAULT_LISTEN.to_string()],
            listen_unix: None,
            state_dir: default_state_dir(),
            registry_mirrors: Vec::new(),
            insecure_registries: Vec::new(),
            executor: ExecutorConfig {
                default: "proot".to_string(),
                proot_path: None,
                rules: Vec::new(),
                plugins: Vec::new(),
                plugin_dir: None,
            },
            network: NetworkConfig::default(),
        }
    }
}

/// Command-line values; `None` and empty lists leave the lower layers'
/// values in place.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_unix: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub registry_mirrors: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorOverrides>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkOverrides>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct NetworkOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<NetworkIsolation>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ExecutorOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    /// figment's message names the key, the source (file or environment
    /// variable) and the expected type.
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
}

impl Config {
    /// Loads the configuration from the layers described in the module
    /// docs. `file` is the `--config` argument; without it, no file is read.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::figment(file, overrides)?
            .extract()
            .map_err(|error| ConfigError::Invalid(Box::new(error)))
            .and_then(Config::validated)
    }

    fn figment(file: Option<&Path>, overrides: &Overrides) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file.to_path_buf()));
            }
            figment = figment.merge(Toml::file(file));
        }
        Ok(figment
            .merge(Env::prefixed("SIDEWHALE_").filter(is_config_key).split("__"))
            .merge(Serialized::defaults(overrides)))
    }

    fn validated(self) -> Result<Config, ConfigError> {
        let invalid = |message: String| {
            ConfigError::Invalid(Box::new(figment::Error::from(message)))
        };
        for address in &self.insecure_registries {
            if address.contains("://") || address.contains('/') {
                return Err(invalid(format!(
                    "insecure_registries: {address:?} must be HOST:PORT, without a scheme or path"
                )));
            }
        }
        for mirror in &self.registry_mirrors {
            if !(mirror.starts_with("http://") || mirror.starts_with("https://")) {
                return Err(invalid(format!(
                    "registry_mirrors: {mirror:?} must be a URL starting with http:// or https://"
                )));
            }
        }
        Ok(self)
    }

    /// Returns the unix socket path: `listen_unix`, or `docker.sock` in
    /// the state directory.
    pub fn unix_socket(&self) -> PathBuf {
        self.listen_unix.clone().unwrap_or_else(|| self.state_dir.join("docker.sock"))
    }

    /// Returns the executor chosen for a normalised image reference by the
    /// first matching rule, or the default.
    pub fn executor_for_image(&self, reference: &str) -> &str {
        self.executor
            .rules
            .iter()
            .find(|rule| glob_matches(&rule.image, reference))
            .map_or(self.executor.default.as_str(), |rule| rule.executor.as_str())
    }
}

/// Chooses `/var/lib/sidewhale` for root and the XDG data directory for
/// everyone else, as rootless container tools do.
fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    if is_root {
        return PathBuf::from("/var/lib/sidewhale");
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|value| !value.is_empty()) {
        return PathBuf::from(data).join("sidewhale");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/sidewhale"),
        None => std::env::temp_dir().join("sidewhale"),
    }
}

/// Matches `text` against a glob where `*` stands for any run of characters
/// and `?` for one character.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            backtrack = Some((p, t));
            p += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            t = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
// figment::Jail closures return figment::Error, whose size the tests cannot change.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn glob_matching() {
        assert!(glob_matches("docker.io/library/postgres:*", "docker.io/library/postgres:16"));
        assert!(glob_matches("*oracle*", "container-registry.oracle.com/database/free:1"));
        assert!(!glob_matches("docker.io/library/postgres:*", "docker.io/library/redis:7"));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "ac"));
    }

    #[test]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "sidewhale.toml",
                r#"
                    listen = ["127.0.0.1:1111"]
                    state_dir = "/from/file"
                    [executor]
                    default = "chroot"
                    [[executor.rules]]
                    image = "docker.io/library/postgres:*"
                    executor = "bubblewrap"
                "#,
            )?;
            jail.set_env("SIDEWHALE_STATE_DIR", "/from/env");
            let overrides = Overrides {
                listen: vec!["127.0.0.1:2222".into()],
                ..Overrides::default()
            };
            let config = Config::load(Some(Path::new("sidewhale.toml")), &overrides)
                .map_err(|error| error.to_string())?;
            assert_eq!(config.listen, vec!["127.0.0.1:2222"]);
            assert_eq!(config.state_dir, PathBuf::from("/from/env"));
            assert_eq!(config.executor.default, "chroot");
            assert_eq!(config.executor_for_image("docker.io/library/postgres:16"), "bubblewrap");
            assert_eq!(config.executor_for_image("docker.io/library/redis:7"), "chroot");
            Ok(())
        });
    }

    #[test]
    fn invalid_value_names_key_and_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "listen = 5")?;
            let error = Config::load(Some(Path::new("bad.toml")), &Overrides::default())
                .expect_err("a number is not a list of addresses");
            let message = error.to_string();
            assert!(message.contains("listen"), "{message}");
            assert!(message.contains("bad.toml"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "state_directory = \"/x\"")?;
            let error = Config::load(Some(Path::new("typo.toml")), &Overrides::default());
            assert!(error.is_err());
            Ok(())
        });
    }

    #[test]
    fn other_variables_are_not_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SIDEWHALE_LOG", "debug");
            jail.set_env("SIDEWHALE_SOMETHING_ELSE", "1");
            assert!(Config::load(None, &Overrides::default()).is_ok());
            Ok(())
        });
    }

    #[test]
    fn network_isolation_layers() {
        figment::Jail::expect_with(|jail| {
            let config = Config::load(None, &Overrides::default())
                .map_err(|error| error.to_string())?;
            assert_eq!(config.network.isolation, NetworkIsolation::Auto);

            jail.set_env("SIDEWHALE_NETWORK__ISOLATION", "host");
            let config = Config::load(None, &Overrides::default())
                .map_err(|error| error.to_string())?;
            assert_eq!(config.network.isolation, NetworkIsolation::Host);

            let overrides = Overrides {
                network: Some(NetworkOverrides {
                    isolation: Some(NetworkIsolation::Namespace),
                }),
                ..Overrides::default()
            };
            let config = Config::load(None, &overrides).map_err(|error| error.to_string())?;
            assert_eq!(config.network.isolation, NetworkIsolation::Namespace);

            jail.set_env("SIDEWHALE_NETWORK__ISOLATION", "bridge");
            let error = Config::load(None, &Overrides::default()).expect_err("unknown mode");
            let message = error.to_string().to_lowercase();
            assert!(message.contains("network.isolation"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn plugins_layer_like_other_lists() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "plugins.toml",
                r#"
                    [executor]
                    plugins = ["/opt/a.so"]
                    plugin_dir = "/opt/plugins"
                "#,
            )?;
            let file = Path::new("plugins.toml");
            let config = Config::load(Some(file), &Overrides::default())
                .map_err(|error| error.to_string())?;
            assert_eq!(config.executor.plugins, vec![PathBuf::from("/opt/a.so")]);
            assert_eq!(config.executor.plugin_dir, Some(PathBuf::from("/opt/plugins")));

            let overrides = Overrides {
                executor: Some(ExecutorOverrides {
                    plugins: vec!["/cli/b.so".into()],
                    ..ExecutorOverrides::default()
                }),
                ..Overrides::default()
            };
            let config = Config::load(Some(file), &overrides).map_err(|error| error.to_string())?;
            assert_eq!(config.executor.plugins, vec![PathBuf::from("/cli/b.so")]);
            assert_eq!(config.executor.default, "proot");
            Ok(())
        });
    }

    #[test]
    fn mirror_must_be_url() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SIDEWHALE_REGISTRY_MIRRORS", "[\"127.0.0.1:5000\"]");
            let error = Config::load(None, &Overrides::default()).expect_err("no scheme");
            assert!(error.to_string().contains("registry_mirrors"));
            Ok(())
        });
    }
}

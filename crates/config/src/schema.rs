//! The keys Warren understands, what values they take, and the RabbitMQ keys it knows of but
//! does not implement.
//!
//! A key pattern is a dotted key in which `*` stands for one segment of the operator's choosing
//! (`listeners.tcp.*` matches `listeners.tcp.default` and `listeners.tcp.other`). Each pattern
//! has one function that checks the value and stores it; its error text says what the key
//! accepts, and [`apply`] wraps it with the file, line and key.

use std::net::{IpAddr, SocketAddr};

use crate::{
    Config, ConfigError, DiscoveryBackend, LeaderLocator, ListenAddress, LogLevel,
    MAX_MESSAGE_SIZE_LIMIT, PartitionHandling, QueueType, Setting,
};

pub(crate) type Apply = fn(&mut Config, &Setting, &[&str]) -> Result<(), String>;

/// Every key Warren implements.
const KEYS: &[(&str, Apply)] = &[
    ("listeners.tcp", |config, setting, _| {
        match setting.value.as_str() {
            "none" => {
                config.listeners.clear();
                Ok(())
            }
            _ => Err("expected 'none', or a listener under 'listeners.tcp.<name>'".into()),
        }
    }),
    ("listeners.tcp.*", |config, setting, _| {
        config.listeners.push(listen_address(&setting.value)?);
        Ok(())
    }),
    ("management.tcp.port", |config, setting, _| {
        management_port(config, &setting.value)
    }),
    ("management.tcp.ip", |config, setting, _| {
        management_ip(config, &setting.value)
    }),
    // The names before RabbitMQ 3.7.
    ("management.listener.port", |config, setting, _| {
        management_port(config, &setting.value)
    }),
    ("management.listener.ip", |config, setting, _| {
        management_ip(config, &setting.value)
    }),
    ("default_user", |config, setting, _| {
        config.default_user = setting.value.clone();
        Ok(())
    }),
    ("default_pass", |config, setting, _| {
        config.default_pass = setting.value.clone();
        Ok(())
    }),
    ("default_vhost", |config, setting, _| {
        config.default_vhost = setting.value.clone();
        Ok(())
    }),
    ("load_definitions", |config, setting, _| {
        config.load_definitions = Some(setting.value.clone().into());
        Ok(())
    }),
    ("definitions.local.path", |config, setting, _| {
        config.load_definitions = Some(setting.value.clone().into());
        Ok(())
    }),
    (
        "definitions.import_backend",
        |_, setting, _| match setting.value.as_str() {
            "local_filesystem" | "rabbit_definitions_import_local_filesystem" => Ok(()),
            other => Err(format!(
                "'{other}' is not an import backend Warren has (local_filesystem)"
            )),
        },
    ),
    ("default_user_tags.*", |config, setting, wildcards| {
        let tag = wildcards[0].to_string();
        config.default_user_tags.retain(|existing| *existing != tag);
        if boolean(&setting.value)? {
            config.default_user_tags.push(tag);
        }
        Ok(())
    }),
    ("default_permissions.configure", |config, setting, _| {
        config.default_permissions.configure = setting.value.clone();
        Ok(())
    }),
    ("default_permissions.write", |config, setting, _| {
        config.default_permissions.write = setting.value.clone();
        Ok(())
    }),
    ("default_permissions.read", |config, setting, _| {
        config.default_permissions.read = setting.value.clone();
        Ok(())
    }),
    ("loopback_users", |config, setting, _| {
        match setting.value.as_str() {
            "none" => {
                config.loopback_users.clear();
                Ok(())
            }
            _ => Err("expected 'none', or 'loopback_users.<user> = true|false'".into()),
        }
    }),
    ("loopback_users.*", |config, setting, wildcards| {
        let user = wildcards[0].to_string();
        config.loopback_users.retain(|existing| *existing != user);
        if boolean(&setting.value)? {
            config.loopback_users.push(user);
        }
        Ok(())
    }),
    ("heartbeat", |config, setting, _| {
        config.heartbeat = integer(&setting.value, 0, u64::from(u16::MAX))? as u16;
        Ok(())
    }),
    ("frame_max", |config, setting, _| {
        let value = integer(&setting.value, 0, u64::from(u32::MAX))? as u32;
        if value != 0 && value < 8192 {
            return Err("expected 0 (no limit) or at least 8192 bytes".into());
        }
        config.frame_max = value;
        Ok(())
    }),
    ("channel_max", |config, setting, _| {
        config.channel_max = integer(&setting.value, 0, u64::from(u16::MAX))? as u16;
        Ok(())
    }),
    ("max_message_size", |config, setting, _| {
        config.max_message_size =
            integer(&setting.value, 1, u64::from(MAX_MESSAGE_SIZE_LIMIT))? as u32;
        Ok(())
    }),
    ("vm_memory_high_watermark.relative", |config, setting, _| {
        let value = float(&setting.value)?;
        if !(0.0..=1.0).contains(&value) {
            return Err("expected a fraction of total memory from 0.0 to 1.0".into());
        }
        config.memory_high_watermark_relative = value;
        Ok(())
    }),
    ("vm_memory_high_watermark.absolute", |config, setting, _| {
        config.memory_high_watermark_absolute = Some(information_unit(&setting.value)?);
        Ok(())
    }),
    ("disk_free_limit.absolute", |config, setting, _| {
        config.disk_free_limit_absolute = Some(information_unit(&setting.value)?);
        Ok(())
    }),
    ("disk_free_limit.relative", |config, setting, _| {
        let value = float(&setting.value)?;
        if value < 0.0 {
            return Err("expected a non-negative multiple of total memory".into());
        }
        config.disk_free_limit_relative = Some(value);
        Ok(())
    }),
    ("log.console", |config, setting, _| {
        config.log.console = boolean(&setting.value)?;
        Ok(())
    }),
    ("log.console.level", |config, setting, _| {
        config.log.console_level = level(&setting.value)?;
        Ok(())
    }),
    ("log.default.level", |config, setting, _| {
        let level = level(&setting.value)?;
        config.log.console_level = level;
        config.log.file_level = level;
        Ok(())
    }),
    ("log.file", |config, setting, _| {
        config.log.file = match setting.value.as_str() {
            "false" => None,
            path => Some(path.into()),
        };
        Ok(())
    }),
    ("log.file.level", |config, setting, _| {
        config.log.file_level = level(&setting.value)?;
        Ok(())
    }),
    (
        "distribution.listener.port_range.min",
        |config, setting, _| {
            config.cluster.port = integer(&setting.value, 0, u64::from(u16::MAX))? as u16;
            Ok(())
        },
    ),
    (
        "distribution.listener.port_range.max",
        |_config, setting, _| {
            // One port is used: the range's lower end.
            integer(&setting.value, 0, u64::from(u16::MAX))?;
            Ok(())
        },
    ),
    ("cluster.listener.port", |config, setting, _| {
        config.cluster.port = integer(&setting.value, 0, u64::from(u16::MAX))? as u16;
        Ok(())
    }),
    ("distribution.listener.interface", |config, setting, _| {
        let ip = setting
            .value
            .parse::<IpAddr>()
            .map_err(|_| "expected an IP address such as 192.168.1.10 or ::".to_string())?;
        config.cluster.interface = Some(ip);
        Ok(())
    }),
    ("consumer_timeout", |config, setting, _| {
        config.consumer_timeout = integer(&setting.value, 1, u64::MAX)?;
        Ok(())
    }),
    ("default_queue_type", |config, setting, _| {
        config.default_queue_type = match setting.value.as_str() {
            "classic" => QueueType::Classic,
            "quorum" => QueueType::Quorum,
            "stream" => return Err("streams are not supported; use classic or quorum".into()),
            _ => return Err("expected classic or quorum".into()),
        };
        Ok(())
    }),
    ("queue_leader_locator", |config, setting, _| {
        config.queue_leader_locator = match setting.value.as_str() {
            "client-local" => LeaderLocator::ClientLocal,
            "balanced" => LeaderLocator::Balanced,
            _ => return Err("expected client-local or balanced".into()),
        };
        Ok(())
    }),
    ("cluster_name", |config, setting, _| {
        config.cluster.name = Some(setting.value.clone());
        Ok(())
    }),
    ("cluster_partition_handling", |config, setting, _| {
        config.cluster.partition_handling = match setting.value.as_str() {
            "ignore" => PartitionHandling::Ignore,
            "pause_minority" => PartitionHandling::PauseMinority,
            "autoheal" => PartitionHandling::Autoheal,
            "pause_if_all_down" => {
                return Err(
                    "pause_if_all_down is not supported; use ignore, pause_minority or autoheal"
                        .into(),
                );
            }
            _ => return Err("expected ignore, pause_minority or autoheal".into()),
        };
        Ok(())
    }),
    (
        "cluster_formation.peer_discovery_backend",
        |config, setting, _| match setting.value.as_str() {
            "classic_config" | "rabbit_peer_discovery_classic_config" => {
                if !matches!(config.cluster.discovery, DiscoveryBackend::ClassicConfig(_)) {
                    config.cluster.discovery = DiscoveryBackend::ClassicConfig(Vec::new());
                }
                Ok(())
            }
            "k8s" | "rabbit_peer_discovery_k8s" => {
                config.cluster.discovery = DiscoveryBackend::K8s;
                Ok(())
            }
            "dns" | "rabbit_peer_discovery_dns" => {
                config.cluster.discovery = DiscoveryBackend::Dns;
                Ok(())
            }
            "etcd" | "rabbit_peer_discovery_etcd" => {
                config.cluster.discovery = DiscoveryBackend::Etcd;
                Ok(())
            }
            "consul" | "rabbit_peer_discovery_consul" => {
                config.cluster.discovery = DiscoveryBackend::Consul;
                Ok(())
            }
            "aws" | "rabbit_peer_discovery_aws" => {
                config.cluster.discovery = DiscoveryBackend::Aws;
                Ok(())
            }
            _ => Err(
                "expected classic_config, dns, k8s, etcd, consul or aws (or their \
                 rabbit_peer_discovery_* names)"
                    .into(),
            ),
        },
    ),
    (
        "cluster_formation.classic_config.nodes.*",
        |config, setting, _| {
            let name = setting.value.clone();
            if !name.contains('@') {
                return Err("expected a node name such as rabbit@hostname".into());
            }
            match &mut config.cluster.discovery {
                DiscoveryBackend::ClassicConfig(nodes) => nodes.push(name),
                // The list may come before the backend key; keep it for when the backend is set.
                DiscoveryBackend::None => {
                    config.cluster.discovery = DiscoveryBackend::ClassicConfig(vec![name]);
                }
                // Settings of a backend that is not selected are accepted and unused.
                _ => {}
            }
            Ok(())
        },
    ),
    (
        "cluster_formation.k8s.ordinal_start",
        |config, setting, _| {
            config.cluster.k8s_ordinal_start =
                integer(&setting.value, 0, u64::from(u32::MAX))? as u32;
            Ok(())
        },
    ),
    ("cluster_formation.k8s.seed_node", |config, setting, _| {
        if !setting.value.contains('@') {
            return Err("expected a node name such as rabbit@seed-node-hostname".into());
        }
        config.cluster.k8s_seed_node = Some(setting.value.clone());
        Ok(())
    }),
    // Kubernetes API settings of RabbitMQ before 4.1: the backend no longer calls the API, and
    // RabbitMQ 4.1 accepts and ignores them, as Warren does.
    ("cluster_formation.k8s.host", |_, _, _| Ok(())),
    ("cluster_formation.k8s.port", |_, _, _| Ok(())),
    ("cluster_formation.k8s.scheme", |_, _, _| Ok(())),
    ("cluster_formation.k8s.token_path", |_, _, _| Ok(())),
    ("cluster_formation.k8s.cert_path", |_, _, _| Ok(())),
    ("cluster_formation.k8s.namespace_path", |_, _, _| Ok(())),
    ("cluster_formation.k8s.service_name", |_, _, _| Ok(())),
    ("cluster_formation.k8s.address_type", |_, _, _| Ok(())),
    ("cluster_formation.k8s.hostname_suffix", |_, _, _| Ok(())),
    (
        "cluster_formation.discovery_retry_limit",
        |config, setting, _| {
            config.cluster.discovery_retry_limit =
                integer(&setting.value, 0, u64::from(u32::MAX))? as u32;
            Ok(())
        },
    ),
    (
        "cluster_formation.discovery_retry_interval",
        |config, setting, _| {
            let millis = integer(&setting.value, 0, 3_600_000)?;
            config.cluster.discovery_retry_interval = std::time::Duration::from_millis(millis);
            Ok(())
        },
    ),
];

/// Key prefixes RabbitMQ defines that Warren does not implement: refused with a message that
/// says so, rather than called unknown.
const RABBITMQ_ONLY: &[&str] = &[
    "listeners.ssl",
    "ssl_options",
    "management",
    "prometheus",
    "cluster_formation",
    "vm_memory_high_watermark_paging_ratio",
    "vm_memory_calculation_strategy",
    "auth_backends",
    "auth_mechanisms",
    "auth_ldap",
    "auth_oauth2",
    "tcp_listen_options",
    "num_acceptors",
    "handshake_timeout",
    "reverse_dns_lookups",
    "queue_master_locator",
    "collect_statistics",
    "collect_statistics_interval",
    "mqtt",
    "stomp",
    "web_mqtt",
    "web_stomp",
    "stream",
    "log.file.rotation",
    "log.syslog",
    "log.exchange",
    "log.connection",
    "log.channel",
    "log.queue",
    "log.mirroring",
    "log.federation",
    "log.upgrade",
    "log.ra",
    "distribution",
    "credit_flow_default_credit",
    "mirroring_sync_batch_size",
    "cluster_keepalive_interval",
    "channel_operation_timeout",
    "max_connections",
    "connection_max",
    "proxy_protocol",
    "deprecated_features",
];

/// Sets the management listener's port, keeping its address; `none` (a Warren addition) turns
/// the listener off.
fn management_port(config: &mut Config, value: &str) -> Result<(), String> {
    if value == "none" {
        config.management = None;
        return Ok(());
    }
    let port = integer(value, 0, 65535)
        .map_err(|error| format!("{error}, or none to turn the listener off"))?
        as u16;
    config.management = Some(match config.management {
        Some(ListenAddress::Socket(address)) => {
            ListenAddress::Socket(SocketAddr::new(address.ip(), port))
        }
        _ => ListenAddress::AnyInterface(port),
    });
    Ok(())
}

/// Sets the management listener's address, keeping its port.
fn management_ip(config: &mut Config, value: &str) -> Result<(), String> {
    let ip: IpAddr = value
        .parse()
        .map_err(|_| "expected an IP address such as 127.0.0.1 or ::".to_string())?;
    // Turned off (`management.tcp.port = none`): stays off, whatever the order of the keys.
    let Some(current) = config.management else {
        return Ok(());
    };
    config.management = Some(ListenAddress::Socket(SocketAddr::new(ip, current.port())));
    Ok(())
}

/// Checks one setting against the schema and stores it in `config`.
pub(crate) fn apply(config: &mut Config, setting: &Setting) -> Result<(), ConfigError> {
    let key: Vec<&str> = setting.key.iter().map(String::as_str).collect();
    for (pattern, apply) in KEYS.iter().chain(crate::discovery::KEYS) {
        if let Some(wildcards) = matches(pattern, &key) {
            return apply(config, setting, &wildcards).map_err(|message| {
                ConfigError::InvalidValue {
                    origin: setting.origin.clone(),
                    key: setting.key_text(),
                    value: setting.value.clone(),
                    message,
                }
            });
        }
    }
    let text = setting.key_text();
    if RABBITMQ_ONLY
        .iter()
        .any(|prefix| text == *prefix || text.starts_with(&format!("{prefix}.")))
    {
        return Err(ConfigError::UnsupportedKey {
            origin: setting.origin.clone(),
            key: text,
        });
    }
    let hint = KEYS
        .iter()
        .chain(crate::discovery::KEYS)
        .map(|(pattern, _)| *pattern)
        .filter(|pattern| !pattern.contains('*'))
        .map(|pattern| (edit_distance(pattern, &text), pattern))
        .min()
        .filter(|(distance, _)| *distance <= 3)
        .map(|(_, pattern)| format!(" (did you mean '{pattern}'?)"))
        .unwrap_or_default();
    Err(ConfigError::UnknownKey {
        origin: setting.origin.clone(),
        key: text,
        hint,
    })
}

/// The segments `*` matched, if `key` fits `pattern`.
fn matches<'a>(pattern: &str, key: &[&'a str]) -> Option<Vec<&'a str>> {
    let parts: Vec<&str> = pattern.split('.').collect();
    if parts.len() != key.len() {
        return None;
    }
    let mut wildcards = Vec::new();
    for (part, segment) in parts.iter().zip(key) {
        if *part == "*" {
            wildcards.push(*segment);
        } else if part != segment {
            return None;
        }
    }
    Some(wildcards)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

pub(crate) fn boolean(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected 'true' or 'false'".into()),
    }
}

pub(crate) fn integer(value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(number) if (min..=max).contains(&number) => Ok(number),
        _ => Err(format!("expected an integer from {min} to {max}")),
    }
}

fn float(value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|number| number.is_finite())
        .ok_or_else(|| "expected a number such as 0.4".into())
}

/// Bytes, with RabbitMQ's units (`rabbit_resource_monitor_misc:parse_information_unit`):
/// `k`, `kB`, `M`, `MB`, `G`, `GB`, `T`, `TB`, `P`, `PB` are powers of 1000 (as Kubernetes
/// reads them, since RabbitMQ 3.13); `Ki`, `KiB`, `Mi`, `MiB`... powers of 1024. Case does not
/// matter.
fn information_unit(value: &str) -> Result<u64, String> {
    const EXPECTED: &str = "expected bytes, optionally with a unit: 500MB, 500MiB, 10GB, 10GiB, 2TB, 2TiB, 10000000000";
    let digits = value
        .trim_end()
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let (number, unit) = value.trim_end().split_at(digits);
    let number: u64 = number.parse().map_err(|_| EXPECTED.to_string())?;
    let unit = unit.to_ascii_lowercase();
    let multiplier: u64 = match unit.as_str() {
        "" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u64.pow(2),
        "g" | "gb" => 1000u64.pow(3),
        "t" | "tb" => 1000u64.pow(4),
        "p" | "pb" => 1000u64.pow(5),
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        "pi" | "pib" => 1 << 50,
        _ => return Err(EXPECTED.into()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| EXPECTED.to_string())
}

fn level(value: &str) -> Result<LogLevel, String> {
    LogLevel::parse(value)
        .ok_or_else(|| "expected one of debug, info, warning, error, critical, none".into())
}

/// `5672`, `127.0.0.1:5672`, `[::1]:5672` or `:::5672` (RabbitMQ's IPv6 any-address form).
fn listen_address(value: &str) -> Result<ListenAddress, String> {
    const EXPECTED: &str =
        "expected a port, or an address and port such as 127.0.0.1:5672 or [::1]:5672";
    if let Ok(port) = value.parse::<u16>() {
        return Ok(ListenAddress::AnyInterface(port));
    }
    if let Ok(address) = value.parse::<SocketAddr>() {
        return Ok(ListenAddress::Socket(address));
    }
    if let Some((ip, port)) = value.rsplit_once(':')
        && let (Ok(ip), Ok(port)) = (ip.parse::<IpAddr>(), port.parse::<u16>())
    {
        return Ok(ListenAddress::Socket(SocketAddr::new(ip, port)));
    }
    Err(EXPECTED.into())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_text(text, Path::new("rabbitmq.conf"))
    }

    #[test]
    fn defaults_are_rabbitmqs() {
        let config = Config::default();
        assert_eq!(config.listeners, vec![ListenAddress::AnyInterface(5672)]);
        assert_eq!(
            (config.heartbeat, config.frame_max, config.channel_max),
            (60, 131_072, 2047)
        );
        assert_eq!(config.max_message_size, 16 * 1024 * 1024);
        assert_eq!(config.loopback_users, vec!["guest".to_string()]);
    }

    #[test]
    fn queue_type_and_leader_locator_defaults_are_read_and_checked() {
        let config = Config::default();
        assert_eq!(config.default_queue_type, QueueType::Classic);
        assert_eq!(config.queue_leader_locator, LeaderLocator::ClientLocal);
        let config =
            load("default_queue_type = quorum\nqueue_leader_locator = balanced\n").unwrap();
        assert_eq!(config.default_queue_type, QueueType::Quorum);
        assert_eq!(config.queue_leader_locator, LeaderLocator::Balanced);
        for (text, key, why) in [
            (
                "default_queue_type = stream\n",
                "default_queue_type",
                "streams",
            ),
            (
                "default_queue_type = fast\n",
                "default_queue_type",
                "classic or quorum",
            ),
            (
                "queue_leader_locator = random\n",
                "queue_leader_locator",
                "balanced",
            ),
        ] {
            let error = load(text).unwrap_err().to_string();
            assert!(error.contains(key) && error.contains(why), "{error}");
        }
    }

    #[test]
    fn consumer_timeout_is_thirty_minutes_unless_set() {
        assert_eq!(Config::default().consumer_timeout, 1_800_000);
        let config = load("consumer_timeout = 60000\n").unwrap();
        assert_eq!(config.consumer_timeout, 60_000);
        let error = load("consumer_timeout = 0\n").unwrap_err().to_string();
        assert!(error.contains("consumer_timeout"), "{error}");
    }

    #[test]
    fn every_issue_key_is_read() {
        let config = load(
            "listeners.tcp.default = 127.0.0.1:5673\n\
             listeners.tcp.other = [::1]:5674\n\
             listeners.tcp.third = :::5675\n\
             default_user = admin\n\
             default_pass = Passw0rd\n\
             default_vhost = prod\n\
             loopback_users.guest = false\n\
             loopback_users.admin = true\n\
             heartbeat = 30\n\
             frame_max = 16384\n\
             channel_max = 100\n\
             max_message_size = 1048576\n\
             log.console.level = debug\n",
        )
        .unwrap();
        assert_eq!(
            config.listeners,
            vec![
                ListenAddress::Socket("127.0.0.1:5673".parse().unwrap()),
                ListenAddress::Socket("[::1]:5674".parse().unwrap()),
                ListenAddress::Socket("[::]:5675".parse().unwrap()),
            ]
        );
        assert_eq!(config.default_user, "admin");
        assert_eq!(config.default_pass, "Passw0rd");
        assert_eq!(config.default_vhost, "prod");
        assert_eq!(config.loopback_users, vec!["admin".to_string()]);
        assert_eq!(
            (config.heartbeat, config.frame_max, config.channel_max),
            (30, 16384, 100)
        );
        assert_eq!(config.max_message_size, 1_048_576);
        assert_eq!(config.log.console_level, LogLevel::Debug);
    }

    #[test]
    fn cluster_keys_are_read() {
        let config = load(
            "cluster_formation.peer_discovery_backend = rabbit_peer_discovery_classic_config\n\
             cluster_formation.classic_config.nodes.1 = rabbit@hare\n\
             cluster_formation.classic_config.nodes.2 = rabbit@rabbit\n\
             cluster_formation.discovery_retry_limit = 3\n\
             cluster_formation.discovery_retry_interval = 250\n\
             cluster_partition_handling = pause_minority\n\
             cluster_name = prod\n\
             distribution.listener.interface = 127.0.0.1\n\
             distribution.listener.port_range.min = 25700\n\
             distribution.listener.port_range.max = 25700\n",
        )
        .unwrap();
        let cluster = &config.cluster;
        assert_eq!(
            cluster.discovery,
            DiscoveryBackend::ClassicConfig(vec!["rabbit@hare".into(), "rabbit@rabbit".into()])
        );
        assert_eq!(cluster.discovery_retry_limit, 3);
        assert_eq!(cluster.discovery_retry_interval.as_millis(), 250);
        assert_eq!(cluster.partition_handling, PartitionHandling::PauseMinority);
        assert_eq!(cluster.name.as_deref(), Some("prod"));
        assert_eq!(cluster.interface, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(cluster.port, 25700);
        let error = load("cluster_partition_handling = sometimes\n").unwrap_err();
        assert!(
            error.to_string().contains("cluster_partition_handling"),
            "{error}"
        );
        let error = load("cluster_formation.peer_discovery_backend = zookeeper\n").unwrap_err();
        assert!(
            error.to_string().contains("peer_discovery_backend"),
            "{error}"
        );
        let error = load("cluster_formation.classic_config.nodes.1 = hare\n").unwrap_err();
        assert!(error.to_string().contains("node name"), "{error}");
    }

    #[test]
    fn discovery_service_keys_are_read_and_unselected_backends_accepted() {
        let config = load(
            "cluster_formation.peer_discovery_backend = rabbit_peer_discovery_etcd\n\
             cluster_formation.etcd.endpoints.1 = one.etcd.local:2379\n\
             cluster_formation.etcd.endpoints.2 = two.etcd.local:2479\n\
             cluster_formation.etcd.key_prefix = rabbitmq_discovery\n\
             cluster_formation.etcd.cluster_name = staging\n\
             cluster_formation.etcd.node_ttl = 40\n\
             cluster_formation.etcd.lock_timeout = 60\n\
             cluster_formation.etcd.username = rabbitmq\n\
             cluster_formation.etcd.password = s3kR37\n\
             cluster_formation.dns.hostname = discovery.eng.example.local.\n\
             cluster_formation.consul.host = consul.local\n\
             cluster_formation.consul.svc_tags.1 = qa\n\
             cluster_formation.consul.svc_meta.owner = team\n\
             cluster_formation.consul.deregister_after = 90\n\
             cluster_formation.registration.enabled = false\n\
             cluster_formation.node_cleanup.only_log_warning = false\n\
             cluster_formation.node_cleanup.interval = 90\n\
             cluster_formation.proxy.http_proxy = 192.168.0.98\n\
             cluster_formation.proxy.proxy_exclusions.1 = 169.254.169.254\n",
        )
        .unwrap();
        let cluster = &config.cluster;
        assert_eq!(cluster.discovery, DiscoveryBackend::Etcd);
        let settings = &cluster.discovery_settings;
        assert_eq!(settings.etcd.endpoints.len(), 2);
        assert_eq!(settings.etcd.key_prefix, "rabbitmq_discovery");
        assert_eq!(settings.etcd.cluster_name, "staging");
        assert_eq!(settings.etcd.node_ttl.as_secs(), 40);
        assert_eq!(settings.etcd.lock_timeout.as_secs(), 60);
        assert_eq!(
            settings.dns.hostname.as_deref(),
            Some("discovery.eng.example.local")
        );
        assert_eq!(settings.consul.host, "consul.local");
        assert_eq!(settings.consul.svc_tags, vec!["qa".to_string()]);
        assert_eq!(
            settings.consul.svc_meta,
            vec![("owner".to_string(), "team".to_string())]
        );
        assert!(!settings.registration_enabled);
        assert!(!settings.node_cleanup.only_log_warning);
        assert_eq!(settings.node_cleanup.interval.as_secs(), 90);
        assert_eq!(
            settings.proxy.exclusions,
            vec!["169.254.169.254".to_string()]
        );
        let error = load("cluster_formation.etcd.endpont.1 = a:1\n").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("cluster_formation.etcd.endpont.1"),
            "{error}"
        );
        let error = load("cluster_formation.consul.port = many\n").unwrap_err();
        assert!(error.to_string().contains("consul.port"), "{error}");
        let config = load(
            "cluster_formation.peer_discovery_backend = aws\n\
             cluster_formation.aws.region = eu-west-1\n\
             cluster_formation.aws.instance_tags.service = rabbitmq\n\
             cluster_formation.aws.use_private_ip = true\n",
        )
        .unwrap();
        assert_eq!(config.cluster.discovery, DiscoveryBackend::Aws);
        let aws = &config.cluster.discovery_settings.aws;
        assert_eq!(aws.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            aws.instance_tags,
            vec![("service".into(), "rabbitmq".into())]
        );
        assert!(aws.use_private_ip);
    }

    #[test]
    fn the_management_listener_is_placed_or_turned_off() {
        let config = load("management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = 15000\n").unwrap();
        assert_eq!(
            config.management,
            Some(ListenAddress::Socket("127.0.0.1:15000".parse().unwrap()))
        );
        let config = load("management.listener.port = 15001\n").unwrap();
        assert_eq!(config.management, Some(ListenAddress::AnyInterface(15001)));
        for text in [
            "management.tcp.port = none\nmanagement.tcp.ip = 127.0.0.1\n",
            "management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = none\n",
        ] {
            assert_eq!(load(text).unwrap().management, None, "{text}");
        }
        let error = load("management.tcp.port = lots\n").unwrap_err();
        assert!(error.to_string().contains("management.tcp.port"), "{error}");
    }

    #[test]
    fn k8s_keys_are_read_and_a_misspelt_one_is_named() {
        let config = load(
            "cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s\n\
             cluster_formation.k8s.ordinal_start = 1\n\
             cluster_formation.k8s.seed_node = rabbit@seed-0.nodes\n\
             cluster_formation.k8s.host = kubernetes.default.svc\n\
             cluster_formation.classic_config.nodes.1 = rabbit@unused\n",
        )
        .unwrap();
        assert_eq!(config.cluster.discovery, DiscoveryBackend::K8s);
        assert_eq!(config.cluster.k8s_ordinal_start, 1);
        assert_eq!(
            config.cluster.k8s_seed_node.as_deref(),
            Some("rabbit@seed-0.nodes")
        );
        let error = load("cluster_formation.k8s.ordnal_start = 1\n").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("cluster_formation.k8s.ordnal_start"),
            "{error}"
        );
    }

    /// An environment holding `pairs` only.
    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    #[test]
    fn the_distribution_port_follows_the_environment() {
        assert_eq!(Config::load_with(env(&[])).unwrap().cluster.port, 25672);
        let config = Config::load_with(env(&[("RABBITMQ_NODE_PORT", "5673")])).unwrap();
        assert_eq!(config.cluster.port, 25673);
        let config = Config::load_with(env(&[
            ("RABBITMQ_NODE_PORT", "5673"),
            ("WARREN_DIST_PORT", "4000"),
            ("RABBITMQ_USE_LONGNAME", "true"),
        ]))
        .unwrap();
        assert_eq!(config.cluster.port, 4000);
        assert!(config.cluster.use_longname);
        assert!(Config::load_with(env(&[("WARREN_USE_LONGNAME", "yes")])).is_err());
    }

    #[test]
    fn worker_threads_come_from_the_environment() {
        assert_eq!(Config::load_with(env(&[])).unwrap().worker_threads, None);
        let config = Config::load_with(env(&[("WARREN_WORKER_THREADS", "1")])).unwrap();
        assert_eq!(config.worker_threads, Some(1));
        for bad in ["0", "-2", "two", "1025", ""] {
            let error = Config::load_with(move |name: &str| {
                (name == "WARREN_WORKER_THREADS").then(|| bad.to_string())
            })
            .unwrap_err()
            .to_string();
            assert_eq!(
                error,
                format!(
                    "environment variable WARREN_WORKER_THREADS: invalid value '{bad}': expected a number of threads from 1 to 1024"
                )
            );
        }
    }

    #[test]
    fn none_values_clear_lists() {
        let config = load("loopback_users = none\nlisteners.tcp = none\n").unwrap();
        assert!(config.loopback_users.is_empty());
        assert!(config.listeners.is_empty());
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            (
                "heartbeat = soon",
                "rabbitmq.conf:2: invalid value 'soon' for 'heartbeat': expected an integer from 0 to 65535",
            ),
            (
                "frame_max = 100",
                "rabbitmq.conf:2: invalid value '100' for 'frame_max': expected 0 (no limit) or at least 8192 bytes",
            ),
            (
                "max_message_size = 1000000000",
                "rabbitmq.conf:2: invalid value '1000000000' for 'max_message_size': expected an integer from 1 to 536870912",
            ),
            (
                "defualt_user = x",
                "rabbitmq.conf:2: unknown configuration key 'defualt_user' (did you mean 'default_user'?)",
            ),
            (
                "no.such.thing = 1",
                "rabbitmq.conf:2: unknown configuration key 'no.such.thing'",
            ),
            (
                "ssl_options.cacertfile = /x",
                "rabbitmq.conf:2: configuration key 'ssl_options.cacertfile' is a RabbitMQ setting that Warren does not support",
            ),
            (
                "listeners.tcp.default = localhost",
                "rabbitmq.conf:2: invalid value 'localhost' for 'listeners.tcp.default': expected a port, or an address and port such as 127.0.0.1:5672 or [::1]:5672",
            ),
            (
                "log.console.level = loud",
                "rabbitmq.conf:2: invalid value 'loud' for 'log.console.level': expected one of debug, info, warning, error, critical, none",
            ),
            (
                "loopback_users.guest = maybe",
                "rabbitmq.conf:2: invalid value 'maybe' for 'loopback_users.guest': expected 'true' or 'false'",
            ),
        ];
        for (line, expected) in cases {
            let error = load(&format!("default_user = a\n{line}\n")).unwrap_err();
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn environment_gives_defaults_and_the_file_wins() {
        let dir = std::env::temp_dir().join(format!("warren-config-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rabbitmq.conf");
        std::fs::write(&file, "default_pass = from-file\n").unwrap();
        let base = dir.join("rabbitmq");
        let env = |name: &str| match name {
            "RABBITMQ_DEFAULT_USER" => Some("admin".to_string()),
            "RABBITMQ_DEFAULT_PASS" => Some("from-env".to_string()),
            "RABBITMQ_NODE_PORT" => Some("5999".to_string()),
            // Without the extension, as RabbitMQ allows.
            "RABBITMQ_CONFIG_FILE" => Some(base.to_string_lossy().into_owned()),
            _ => None,
        };
        let config = Config::load_with(env).unwrap();
        assert_eq!(config.default_user, "admin");
        assert_eq!(config.default_pass, "from-file");
        assert_eq!(config.listeners, vec![ListenAddress::AnyInterface(5999)]);
        assert_eq!(config.source.as_deref(), Some(file.as_path()));
        std::fs::remove_dir_all(dir).unwrap();

        let error = Config::load_with(|name| (name == "WARREN_NODE_PORT").then(|| "x".to_string()))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "environment variable WARREN_NODE_PORT: invalid value 'x': expected a port number"
        );
        let error = Config::load_with(|name| {
            (name == "WARREN_CONFIG_FILE").then(|| "/nonexistent/w.conf".to_string())
        })
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot read configuration file /nonexistent/w.conf")
        );
    }

    #[test]
    fn resource_limits_take_rabbitmq_units_and_absolute_wins() {
        let config = Config::default();
        let gib = 1 << 30;
        assert_eq!(config.memory_limit(10 * gib), 4 * gib);
        assert_eq!(config.disk_limit(10 * gib), 50_000_000);
        let config = load(
            "vm_memory_high_watermark.relative = 0.6\n\
             vm_memory_high_watermark.absolute = 2GiB\n\
             disk_free_limit.relative = 1.5\n",
        )
        .unwrap();
        assert_eq!(config.memory_limit(10 * gib), 2 * gib, "absolute wins");
        assert_eq!(config.disk_limit(10 * gib), 15 * gib, "relative to memory");
        for (text, bytes) in [
            ("500MB", 500_000_000),
            ("500MiB", 500 << 20),
            ("10gb", 10_000_000_000),
            ("2Ti", 2 << 40),
            ("1k", 1000),
            ("123", 123),
        ] {
            let config = load(&format!("disk_free_limit.absolute = {text}\n")).unwrap();
            assert_eq!(config.disk_limit(0), bytes, "{text}");
        }
        let error = load("vm_memory_high_watermark.absolute = lots\n").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("invalid value 'lots' for 'vm_memory_high_watermark.absolute'"),
            "{error}"
        );
        let error = load("vm_memory_high_watermark.relative = 1.5\n").unwrap_err();
        assert!(error.to_string().contains("from 0.0 to 1.0"), "{error}");
    }

    #[test]
    fn the_data_directory_follows_rabbitmqs_variables() {
        let config = Config::load_with(env(&[("RABBITMQ_NODENAME", "rabbit@box")])).unwrap();
        assert_eq!(config.node_name, "rabbit@box");
        assert_eq!(config.data_dir, Path::new("warren-data/rabbit@box"));
        let config = Config::load_with(env(&[
            ("WARREN_NODENAME", "w1@box"),
            ("RABBITMQ_MNESIA_BASE", "/var/lib/rabbitmq/mnesia"),
        ]))
        .unwrap();
        assert_eq!(
            config.data_dir,
            Path::new("/var/lib/rabbitmq/mnesia/w1@box")
        );
        let config = Config::load_with(env(&[
            ("RABBITMQ_MNESIA_DIR", "/data/rabbit"),
            ("RABBITMQ_MNESIA_BASE", "/ignored"),
        ]))
        .unwrap();
        assert_eq!(config.data_dir, Path::new("/data/rabbit"));
        let config = Config::load_with(env(&[("WARREN_DATA_DIR", "/data/warren")])).unwrap();
        assert_eq!(config.data_dir, Path::new("/data/warren"));
    }
}

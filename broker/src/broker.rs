//! The node's shared state: configuration, users, vhosts, and the shutdown signal.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_config::Config;

use crate::auth::Users;
use crate::direct_reply::DirectReplies;
use crate::events::ConnectionId;
use crate::vhost::VHost;

/// Everything connections share.
#[derive(Debug)]
pub struct Broker {
    /// The configuration the node started with.
    pub config: Arc<Config>,
    /// Users and permissions.
    pub users: Users,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    next_connection_id: AtomicU64,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Direct reply-to addresses.
    pub direct_replies: DirectReplies,
}

/// Why the broker could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `default_permissions.*` is not a valid regular expression.
    #[error("default_permissions: {0}")]
    Permissions(String),
}

impl Broker {
    /// A broker with the default vhost and default user from `config`.
    pub fn new(config: Config) -> Result<Arc<Broker>, SetupError> {
        let broker = Broker {
            users: Users::default(),
            vhosts: RwLock::new(HashMap::new()),
            next_connection_id: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            direct_replies: DirectReplies::default(),
            config: Arc::new(config),
        };
        let config = broker.config.clone();
        broker.add_vhost(&config.default_vhost);
        broker.users.put_user(
            &config.default_user,
            &config.default_pass,
            config.default_user_tags.clone(),
        );
        let permissions = &config.default_permissions;
        broker
            .users
            .set_permissions(
                &config.default_user,
                &config.default_vhost,
                &permissions.configure,
                &permissions.write,
                &permissions.read,
            )
            .map_err(SetupError::Permissions)?;
        Ok(Arc::new(broker))
    }

    /// A vhost by name.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// Creates a vhost if it does not exist, and returns it.
    pub fn add_vhost(&self, name: &str) -> Arc<VHost> {
        self.vhosts
            .write()
            .entry(name.to_string())
            .or_insert_with(|| VHost::new(name))
            .clone()
    }

    /// Every vhost name.
    pub fn vhost_names(&self) -> Vec<String> {
        self.vhosts.read().keys().cloned().collect()
    }

    pub(crate) fn next_connection_id(&self) -> ConnectionId {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether `user` may connect only from loopback addresses.
    pub fn is_loopback_only(&self, user: &str) -> bool {
        self.config.loopback_users.iter().any(|name| name == user)
    }
}

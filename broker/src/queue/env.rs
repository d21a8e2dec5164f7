//! What a queue engine sees of the node around it: routing for its dead letters, the way out of
//! its vhost once deleted, and where its tasks and records live. Queue engines (classic, quorum,
//! and the dead-lettering they share) hold this, never the vhost or the broker, so that the
//! queue module does not depend on them and an engine can be driven by another environment.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use warren_wire::ShortString;

use super::{QueueHandle, QueueTasks};
use crate::message::Message;
use crate::store::Store;

/// A future an environment returns.
pub type EnvFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The node around a queue, as queue engines see it (a vhost, in the node).
pub trait QueueEnv: Send + Sync + 'static {
    /// The vhost's name.
    fn vhost_name(&self) -> Arc<str>;
    /// The node's queue tasks: engines spawn theirs here, and stop when told.
    fn tasks(&self) -> &QueueTasks;
    /// The node's store (its write-ahead log holds classic queues' records).
    fn store(&self) -> &Arc<Store>;
    /// Appends to `out` the queues `message` reaches from exchange `exchange` (empty: the
    /// default exchange) with `routing_keys`; false when that exchange does not exist.
    fn route(
        &self,
        exchange: &[u8],
        message: &Message,
        routing_keys: &[ShortString],
        out: &mut Vec<QueueHandle>,
    ) -> bool;
    /// Takes a deleted queue out of its vhost and the metadata (every node forgets it).
    fn remove_queue<'a>(&'a self, queue: &'a QueueHandle) -> EnvFuture<'a>;
}

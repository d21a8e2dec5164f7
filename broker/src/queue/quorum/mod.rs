//! Quorum queues: one Raft group per queue across the cluster (`x-queue-type=quorum`).
//!
//! ```text
//!  state   the replicated queue, sans-IO: committed commands in, replies and effects out
//!  hub     the node's side: the group host, each group's machine, deliveries between nodes
//!  front   a queue's handle on one node: channels' commands into the log, its answers out
//! ```

mod dead_letters;
pub(crate) mod front;
pub mod hub;
pub mod state;

pub use hub::{QueueGroupStatus, QuorumHub};
pub use state::DEFAULT_DELIVERY_LIMIT;

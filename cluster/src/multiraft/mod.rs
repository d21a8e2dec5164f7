//! Many Raft groups per node: one per replicated queue (quorum queues), beside the metadata
//! group that openraft runs.
//!
//! ```text
//!  core      one group's Raft, sans-IO: messages, proposals and `now` in, actions out
//!  terms     what a core keeps of its log: terms and sizes after the snapshot
//!  message   the messages members exchange and the actions a core asks for
//!  storage   every group's log in the node's WAL, read back by position
//!  host      one task driving every group on the node: writes, promises, applies, batches
//! ```
//!
//! Why not openraft for these groups too: openraft runs several tasks and its own heartbeat
//! stream per group, and a node holding a thousand idle quorum queues would pay for a thousand
//! of each. Here a group is a plain value; the node's host drives all of its groups from one
//! place, sends what they say to each other node in one batch, and ticks them together, so the
//! heartbeats of idle groups share one message per node pair.

pub mod core;
pub mod host;
pub mod message;
#[cfg(test)]
mod sim;
pub mod storage;
pub mod terms;

pub use self::core::{Config, MembershipChange, ProposeError, Raft, Restored};
pub use message::{
    Action, Entry, HardState, MemberId, Membership, Message, Payload, Role, SnapshotMeta,
};

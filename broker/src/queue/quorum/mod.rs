//! Quorum queues: one Raft group per queue across the cluster (`x-queue-type=quorum`).
//!
//! ```text
//!  state   the replicated queue, sans-IO: committed commands in, replies and effects out
//! ```

pub mod state;

//! Clustering: who a node is, how nodes prove they belong together, how they talk, and the Raft
//! groups they share.
//!
//! ```text
//!  identity   warren@host names, short and long
//!  secret     the cluster secret (the Erlang cookie's role) and challenge-response proofs
//!  transport  one authenticated TCP link per node pair on port 25672: requests, responses and
//!             one-way messages of registered services, batched per link, bounded
//!  raft       openraft groups: log in the WAL, RPCs on the transport, an application state machine
//!  multiraft  many small Raft groups per node (quorum queues): sans-IO cores driven together
//!  control    what warrenctl asks a node, and what nodes ask each other to join and leave
//!  formation  classic_config and k8s: who forms the cluster, who joins it
//!  discovery  DNS, etcd and Consul: discovery, registration, locks, node cleanup, health
//! ```
//!
//! This crate never imports the broker: the broker registers services on the transport and hands
//! Raft groups their state machines.

pub mod control;
pub mod discovery;
pub mod formation;
pub mod identity;
pub mod multiraft;
pub mod raft;
pub mod secret;
pub mod transport;

/// A fresh directory under the system's temporary one, named `warren-{label}-{random}`, for
/// tests that open a data directory.
#[cfg(test)]
pub(crate) fn test_dir(label: &str) -> std::path::PathBuf {
    let mut bytes = [0u8; 8];
    secret::random(&mut bytes);
    let dir =
        std::env::temp_dir().join(format!("warren-{label}-{:016x}", u64::from_le_bytes(bytes)));
    std::fs::create_dir_all(&dir).expect("the temporary directory is writable");
    dir
}

pub use identity::NodeName;
pub use secret::Secret;
pub use transport::{Transport, TransportConfig};

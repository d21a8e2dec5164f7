//! The Warren node: everything between the socket and the queues.
//!
//! ```text
//!  server ──accept──> connection (reader task + writer task)
//!                         │ channels: publish ─route─> vhost ─> exchange bindings ─> queues
//!                         │           consume <────── deliveries ─────────────────── queues
//!  broker: config, users, vhosts; shutdown token and connection tracker
//! ```
//!
//! Start a node with [`Node::start`]; `src/main.rs` only reads the configuration, sets up
//! logging and calls it. Embedders (the test kit) do the same with a configuration of their own.

pub mod admin;
pub mod alarms;
pub mod auth;
pub mod broker;
mod channel;
mod connection;
mod control;
pub mod direct_reply;
pub mod error;
pub mod exchange;
mod http;
mod membership;
pub mod message;
mod names;
pub mod queue;
pub mod remote;
pub mod server;
pub mod store;
pub mod vhost;

pub use broker::Broker;
pub use broker::Formation;
pub use server::{Node, NodeOptions, StartError};
pub use warren_config::Config;

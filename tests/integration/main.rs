//! Warren's integration tests, in one binary to keep linking cheap.
//!
//! - `lapin_client` and `amqprs_client`: the broker through two independent Rust client codecs;
//! - `extensions`: RabbitMQ's extensions (TTL, dead-lettering, limits, priorities...) via lapin;
//! - `protocol`: handshake, framing and error handling with a raw client (what clients never send);
//! - `pika`: the conformance script run through Python's pika (skipped outside CI without pika);
//! - `process`: the `warren` binary as a child process: configuration errors, SIGTERM, the data
//!   directory lock;
//! - `durability`: what survives a restart; paging; segment deletion and compaction;
//! - `faults`: kill -9 under load, damaged log tails, a full disk, memory and disk alarms;
//! - `quorum`: quorum queues on in-process clusters; `chaos`: one under seeded random faults;
//! - `queue_types`: one suite every queue type runs (classic, classic from another node, quorum).

mod amqprs_client;
mod chaos;
mod cluster;
mod cluster_process;
mod definitions;
mod discovery;
mod durability;
mod extensions;
mod faults;
mod k8s_docker;
mod lapin_client;
mod management;
mod management_api;
mod pika;
mod process;
mod protocol;
mod queue_types;
mod quorum;
mod quorum_consumers;
mod quorum_dead_letters;
mod quorum_members;
mod quorum_ttl;

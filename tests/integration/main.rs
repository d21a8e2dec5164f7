//! Warren's integration tests, in one binary to keep linking cheap.
//!
//! - `lapin_client` and `amqprs_client`: the broker through two independent Rust client codecs;
//! - `extensions`: RabbitMQ's extensions (TTL, dead-lettering, limits, priorities...) via lapin;
//! - `protocol`: handshake, framing and error handling with a raw client (what clients never send);
//! - `pika`: the conformance script run through Python's pika (skipped outside CI without pika);
//! - `process`: the `warren` binary as a child process: configuration errors, SIGTERM.

mod amqprs_client;
mod extensions;
mod lapin_client;
mod pika;
mod process;
mod protocol;

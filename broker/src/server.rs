//! Starting and stopping a node: listeners, the accept loop, graceful shutdown.
//!
//! Shutdown: the broker's cancellation token tells every connection to close with 320
//! CONNECTION_FORCED; the task tracker lets [`Node::shutdown`] wait until they have.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use warren_config::{Config, ListenAddress};

use crate::broker::{Broker, SetupError};
use crate::connection;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {address} (listeners.tcp): {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration could not be applied.
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    broker: Arc<Broker>,
    amqp: Vec<SocketAddr>,
}

impl Node {
    /// Binds the configured listeners and starts accepting connections.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        let listen = config.listeners.clone();
        let broker = Broker::open(config).await?;
        broker.start_background();
        let mut listeners = Vec::new();
        for address in listen {
            let bound = bind(address).and_then(|listener| Ok((listener.local_addr()?, listener)));
            match bound {
                Ok(bound) => listeners.push(bound),
                Err(source) => {
                    // Let go of the data directory before reporting.
                    broker.queues.stop.cancel();
                    broker.queues.tracker.close();
                    broker.queues.tracker.wait().await;
                    return Err(StartError::Listen {
                        address: address.to_string(),
                        source,
                    });
                }
            }
        }
        let mut amqp = Vec::new();
        for (local, listener) in listeners {
            tracing::info!("started TCP listener on {local}");
            amqp.push(local);
            tokio::spawn(accept_loop(listener, broker.clone()));
        }
        Ok(Node { broker, amqp })
    }

    /// The addresses the AMQP listeners are bound to (with real ports when 0 was asked for).
    pub fn amqp_addresses(&self) -> &[SocketAddr] {
        &self.amqp
    }

    /// The node's shared state.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Closes every client connection with 320 CONNECTION_FORCED and waits (at most
    /// `grace`) for them to finish.
    pub async fn shutdown(self, grace: Duration) {
        tracing::info!("stopping: closing client connections");
        self.broker.shutdown.cancel();
        self.broker.connections.close();
        if tokio::time::timeout(grace, self.broker.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within {grace:?}");
        }
        // Then the queues, which let go of the store; the last of it closes the data directory.
        self.broker.queues.stop.cancel();
        self.broker.queues.tracker.close();
        if tokio::time::timeout(grace, self.broker.queues.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some queues did not stop within {grace:?}");
        }
        self.broker.store().metadata.shutdown().await;
    }
}

fn bind(address: ListenAddress) -> std::io::Result<TcpListener> {
    let addresses: Vec<SocketAddr> = match address {
        // Dual-stack where IPv6 exists, IPv4 otherwise (containers often have no IPv6).
        ListenAddress::AnyInterface(port) => vec![
            SocketAddr::from(([0u16; 8], port)),
            SocketAddr::from(([0u8; 4], port)),
        ],
        ListenAddress::Socket(address) => vec![address],
    };
    let mut last_error = None;
    for address in addresses {
        let socket = match address {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        };
        let result = socket.and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(address)?;
            socket.listen(1024)
        });
        match result {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::ErrorKind::AddrNotAvailable.into()))
}

async fn accept_loop(listener: TcpListener, broker: Arc<Broker>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = broker.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                let broker_for_task = broker.clone();
                broker
                    .connections
                    .spawn(connection::serve(broker_for_task, socket, peer));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

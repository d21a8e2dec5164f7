//! Bindings of a vhost and routing: binding and unbinding through the metadata log, restoring
//! bindings from records, and the queues a published message routes to.

use warren_wire::{FieldTable, ShortString};

use crate::error::AmqpResult;
use crate::exchange::{Binding, Destination, Exchange};
use crate::message::Message;
use crate::queue::QueueHandle;
use crate::store::metadata::{BindingDestination, MetadataCommand};
use crate::store::model::{BindingRecord, decode_table, encode_table};

use super::VHost;

impl VHost {
    /// Recreates a binding from the metadata (at start, or when applied); both ends must exist.
    pub(crate) fn restore_binding(&self, record: &BindingRecord) -> Result<(), String> {
        let source = self
            .exchange(&record.source)
            .ok_or_else(|| "its source exchange is missing".to_string())?;
        let destination = match &record.destination {
            (true, name) => Destination::Queue(
                self.queue(name)
                    .ok_or_else(|| "its queue is missing".to_string())?,
            ),
            (false, name) => {
                let name =
                    ShortString::try_from(name.as_slice()).map_err(|error| error.to_string())?;
                if self.exchange(&name).is_none() {
                    return Err("its destination exchange is missing".into());
                }
                Destination::Exchange(name)
            }
        };
        source
            .bind(Binding {
                destination,
                routing_key: ShortString::try_from(record.routing_key.as_slice())
                    .map_err(|error| error.to_string())?,
                arguments: decode_table(&record.arguments)?,
            })
            .map(drop)
            .map_err(|error| error.to_string())
    }

    /// Binds `destination` to `exchange` through the metadata log.
    pub async fn bind(
        &self,
        exchange: &Exchange,
        destination: Destination,
        routing_key: ShortString,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        // What the exchange would refuse (a headers binding with a bad x-match) is refused now:
        // applying cannot fail.
        exchange.check_binding(&arguments)?;
        let command = self.binding_command(true, exchange, &destination, &routing_key, &arguments);
        self.propose(command).await
    }

    fn binding_command(
        &self,
        bind: bool,
        exchange: &Exchange,
        destination: &Destination,
        routing_key: &ShortString,
        arguments: &FieldTable,
    ) -> MetadataCommand {
        let (vhost, source) = (self.name.to_string(), exchange.name.to_vec());
        let destination = match destination {
            Destination::Queue(queue) => BindingDestination::Queue(queue.name.to_vec()),
            Destination::Exchange(name) => BindingDestination::Exchange(name.to_vec()),
        };
        let (routing_key, arguments) = (routing_key.to_vec(), encode_table(arguments));
        if bind {
            MetadataCommand::Bind {
                vhost,
                source,
                destination,
                routing_key,
                arguments,
            }
        } else {
            MetadataCommand::Unbind {
                vhost,
                source,
                destination,
                routing_key,
                arguments,
            }
        }
    }

    /// Removes a binding if it exists; an auto-delete exchange left without bindings goes, as in
    /// RabbitMQ.
    pub async fn unbind(
        &self,
        exchange: &Exchange,
        destination: &Destination,
        routing_key: &ShortString,
        arguments: &FieldTable,
    ) -> AmqpResult<()> {
        if !exchange.has_binding(&destination.key(), routing_key, arguments) {
            return Ok(());
        }
        let command = self.binding_command(false, exchange, destination, routing_key, arguments);
        self.propose(command).await
    }

    /// Appends the queues `message` routes to from `exchange` (the default exchange when
    /// `None`) with each of `routing_keys` (the publish key, then `CC` and `BCC` keys), each
    /// queue once. Exchange-to-exchange bindings are followed and each exchange is visited once,
    /// so binding loops end; an exchange whose own bindings match nothing hands the message to
    /// its alternate exchange, as RabbitMQ's `route1` does.
    pub fn route(
        &self,
        exchange: Option<&Exchange>,
        message: &Message,
        routing_keys: &[ShortString],
        out: &mut Vec<QueueHandle>,
    ) {
        let Some(exchange) = exchange else {
            for key in routing_keys {
                if let Some(queue) = self.queue(key)
                    && !out.contains(&queue)
                {
                    out.push(queue);
                }
            }
            return;
        };
        let mut headers = None;
        let mut destinations = Vec::new();
        let mut visited: Vec<ShortString> = vec![exchange.name.clone()];
        self.route_one(
            exchange,
            message,
            routing_keys,
            &mut headers,
            &mut destinations,
        );
        while let Some(destination) = destinations.pop() {
            match destination {
                Destination::Queue(queue) => {
                    if !out.contains(&queue) {
                        out.push(queue);
                    }
                }
                Destination::Exchange(name) => {
                    if visited.contains(&name) {
                        continue;
                    }
                    if let Some(next) = self.exchange(&name) {
                        self.route_one(
                            &next,
                            message,
                            routing_keys,
                            &mut headers,
                            &mut destinations,
                        );
                    }
                    visited.push(name);
                }
            }
        }
    }

    fn route_one(
        &self,
        exchange: &Exchange,
        message: &Message,
        routing_keys: &[ShortString],
        headers: &mut Option<Option<FieldTable>>,
        destinations: &mut Vec<Destination>,
    ) {
        let before = destinations.len();
        for key in routing_keys {
            exchange.route(key, message, headers, destinations);
        }
        if destinations.len() == before
            && let Some(alternate) = exchange.alternate_exchange()
        {
            destinations.push(Destination::Exchange(alternate));
        }
    }
}

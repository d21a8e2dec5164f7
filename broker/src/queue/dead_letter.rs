//! Dead-lettering: the `x-death` history of a message and the copy a queue republishes to its
//! dead-letter exchange.
//!
//! As in RabbitMQ 4: the history is kept beside the message (not read back from headers a client
//! sent), most recent death first, one entry per (queue, reason) whose count grows and which moves
//! to the front when it happens again. The copy loses its `expiration`, gains `x-death`,
//! `x-first-death-*` and `x-last-death-*` headers, and is routed with the dead-letter routing key
//! or else with every key it was published with (CC and BCC included). A message that would come
//! back to a queue it already died in, with no rejection in between, is dropped for that queue.

use std::sync::Arc;

use warren_wire::{FieldTable, FieldValue, ShortString};

use super::env::QueueEnv;
use crate::message::{Death, Deaths, ExtraRoutingKeys, Message, Reason};
use crate::queue::{Incoming, QueueCommand, QueueConfig, QueueHandle};

/// Republishes `messages`, dead-lettered from the queue `queue`, through its dead-letter
/// exchange, at most once: nothing waits for the target queues. A missing dead-letter exchange
/// drops them, as in RabbitMQ.
pub(crate) fn republish(
    env: &dyn QueueEnv,
    queue: &ShortString,
    config: &QueueConfig,
    messages: impl Iterator<Item = (Arc<Message>, Reason)>,
    now_ms: u64,
) {
    for (message, reason) in messages {
        let (copy, targets) = match route(env, queue, config, &message, reason, now_ms) {
            Ok(routed) => routed,
            Err(Unroutable::Cycle) => continue,
            Err(Unroutable::NoExchange) => return,
        };
        for target in &targets {
            target.send(QueueCommand::Publish {
                publisher: 0,
                messages: vec![Incoming {
                    message: copy.clone(),
                    confirm: None,
                }],
            });
        }
    }
}

/// Why a dead letter could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unroutable {
    /// The queue has no dead-letter exchange, or it does not exist.
    NoExchange,
    /// Every queue it routes to is one the message died in before, without a rejection
    /// since: it would go round forever, and is dropped.
    Cycle,
}

/// The copy of `message` dead-lettered from `queue` for `reason`, and the queues its
/// dead-letter exchange routes it to (those it would come back to in a cycle left out).
pub(crate) fn route(
    env: &dyn QueueEnv,
    queue: &ShortString,
    config: &QueueConfig,
    message: &Message,
    reason: Reason,
    now_ms: u64,
) -> Result<(Arc<Message>, Vec<QueueHandle>), Unroutable> {
    let exchange_name = config
        .dead_letter_exchange
        .as_ref()
        .ok_or(Unroutable::NoExchange)?;
    let (copy, keys) = dead_letter(
        message,
        reason,
        queue,
        exchange_name,
        config.dead_letter_routing_key.as_ref(),
        now_ms,
    );
    let mut targets = Vec::new();
    if !env.route(exchange_name, &copy, &keys, &mut targets) {
        return Err(Unroutable::NoExchange);
    }
    if reason != Reason::Rejected
        && let Some(deaths) = copy.deaths.as_deref()
        && !targets.is_empty()
    {
        targets.retain(|target| !is_cycle(deaths, &target.name));
        if targets.is_empty() {
            return Err(Unroutable::Cycle);
        }
    }
    Ok((copy, targets))
}

/// The copy of `message` to publish to `dead_letter_exchange`, with the routing keys to use.
pub fn dead_letter(
    message: &Message,
    reason: Reason,
    queue: &ShortString,
    dead_letter_exchange: &ShortString,
    dead_letter_routing_key: Option<&ShortString>,
    now_ms: u64,
) -> (Arc<Message>, Vec<ShortString>) {
    let bcc: &[ShortString] = message.extra_keys.as_ref().map_or(&[], |extra| &extra.bcc);
    let keys: Vec<ShortString> = match dead_letter_routing_key {
        Some(key) => vec![key.clone()],
        None => message.routing_keys().into_owned(),
    };
    let recorded_keys: Vec<ShortString> = message
        .routing_keys()
        .iter()
        .filter(|key| !bcc.contains(key))
        .cloned()
        .collect();
    let original_expiration = message
        .summary
        .expiration
        .and_then(|range| ShortString::from_bytes(message.properties.slice(range)).ok());
    let mut deaths = message
        .deaths
        .as_deref()
        .cloned()
        .unwrap_or_else(|| Deaths {
            entries: Vec::new(),
            first: (reason, queue.clone(), message.exchange.clone()),
        });
    match deaths
        .entries
        .iter()
        .position(|death| death.queue == *queue && death.reason == reason)
    {
        Some(index) => {
            let mut death = deaths.entries.remove(index);
            death.count += 1;
            deaths.entries.insert(0, death);
        }
        None => deaths.entries.insert(
            0,
            Death {
                queue: queue.clone(),
                reason,
                count: 1,
                time: now_ms / 1000,
                exchange: message.exchange.clone(),
                routing_keys: recorded_keys,
                original_expiration,
            },
        ),
    }

    let mut properties = message.properties.decode().unwrap_or_default();
    properties.expiration = None;
    let mut headers = properties.headers.take().unwrap_or_default();
    let text = |value: &[u8]| FieldValue::LongString(value.to_vec().into());
    let entries = deaths
        .entries
        .iter()
        .map(|death| FieldValue::Table(death_table(death)))
        .collect();
    headers.insert(
        ShortString::from_static("x-death"),
        FieldValue::Array(entries),
    );
    let (first_reason, first_queue, first_exchange) = &deaths.first;
    headers.insert(
        ShortString::from_static("x-first-death-reason"),
        text(first_reason.name().as_bytes()),
    );
    headers.insert(
        ShortString::from_static("x-first-death-queue"),
        text(first_queue),
    );
    headers.insert(
        ShortString::from_static("x-first-death-exchange"),
        text(first_exchange),
    );
    headers.insert(
        ShortString::from_static("x-last-death-reason"),
        text(reason.name().as_bytes()),
    );
    headers.insert(ShortString::from_static("x-last-death-queue"), text(queue));
    headers.insert(
        ShortString::from_static("x-last-death-exchange"),
        text(&message.exchange),
    );
    properties.headers = Some(headers);
    let raw = properties.to_raw();
    let summary = raw.summary().unwrap_or_default();
    let (routing_key, rest) = keys
        .split_first()
        .map_or((ShortString::EMPTY, &[][..]), |(first, rest)| {
            (first.clone(), rest)
        });
    let extra_keys = (!rest.is_empty()).then(|| {
        Box::new(ExtraRoutingKeys {
            cc: rest
                .iter()
                .filter(|key| !bcc.contains(key))
                .cloned()
                .collect(),
            bcc: rest
                .iter()
                .filter(|key| bcc.contains(key))
                .cloned()
                .collect(),
        })
    });
    let copy = Message {
        exchange: dead_letter_exchange.clone(),
        routing_key,
        properties: raw,
        summary,
        body: message.body.clone(),
        extra_keys,
        deaths: Some(Box::new(deaths)),
    };
    (Arc::new(copy), keys)
}

fn death_table(death: &Death) -> FieldTable {
    let text = |value: &[u8]| FieldValue::LongString(value.to_vec().into());
    let mut table = FieldTable::new();
    if let Some(expiration) = &death.original_expiration {
        table.insert(
            ShortString::from_static("original-expiration"),
            text(expiration),
        );
    }
    table.insert(
        ShortString::from_static("count"),
        FieldValue::LongLongInt(death.count as i64),
    );
    table.insert(
        ShortString::from_static("reason"),
        text(death.reason.name().as_bytes()),
    );
    table.insert(ShortString::from_static("queue"), text(&death.queue));
    table.insert(
        ShortString::from_static("time"),
        FieldValue::Timestamp(death.time),
    );
    table.insert(ShortString::from_static("exchange"), text(&death.exchange));
    let keys = death.routing_keys.iter().map(|key| text(key)).collect();
    table.insert(
        ShortString::from_static("routing-keys"),
        FieldValue::Array(keys),
    );
    table
}

/// Whether delivering a dead-lettered message to `target` would close a cycle that no client
/// broke with a rejection (RabbitMQ's `is_death_cycle`).
pub fn is_cycle(deaths: &Deaths, target: &ShortString) -> bool {
    for death in &deaths.entries {
        if death.reason == Reason::Rejected {
            return false;
        }
        if death.queue == *target {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use warren_wire::BasicProperties;

    use super::*;

    fn published(expiration: Option<&'static str>) -> Message {
        let properties = BasicProperties {
            expiration: expiration.map(ShortString::from_static),
            message_id: Some(ShortString::from_static("m1")),
            ..Default::default()
        }
        .to_raw();
        Message {
            exchange: ShortString::from_static("orders"),
            routing_key: ShortString::from_static("new"),
            summary: properties.summary().unwrap(),
            properties,
            body: Bytes::from_static(b"body"),
            extra_keys: Some(Box::new(ExtraRoutingKeys {
                cc: vec![ShortString::from_static("audit")],
                bcc: vec![ShortString::from_static("secret")],
            })),
            deaths: None,
        }
    }

    #[test]
    fn x_death_is_written_as_rabbitmq_4_writes_it() {
        let message = published(Some("60000"));
        let queue = ShortString::from_static("work");
        let dlx = ShortString::from_static("dlx");
        let (copy, keys) = dead_letter(
            &message,
            Reason::Expired,
            &queue,
            &dlx,
            None,
            1_700_000_000_500,
        );
        assert_eq!(keys, ["new", "audit", "secret"]);
        assert_eq!(copy.exchange, "dlx");
        assert_eq!(copy.routing_key, "new");
        let properties = copy.properties.decode().unwrap();
        assert_eq!(properties.expiration, None);
        assert_eq!(properties.message_id, Some(ShortString::from_static("m1")));
        let headers = properties.headers.unwrap();
        let Some(FieldValue::Array(deaths)) = headers.get("x-death") else {
            panic!("x-death missing");
        };
        let FieldValue::Table(death) = &deaths[0] else {
            panic!("x-death entries are tables");
        };
        let keys: Vec<String> = death.iter().map(|(key, _)| key.to_string()).collect();
        assert_eq!(
            keys,
            [
                "original-expiration",
                "count",
                "reason",
                "queue",
                "time",
                "exchange",
                "routing-keys"
            ]
        );
        assert_eq!(death.get("count"), Some(&FieldValue::LongLongInt(1)));
        assert_eq!(
            death.get("time"),
            Some(&FieldValue::Timestamp(1_700_000_000))
        );
        assert_eq!(
            death.get("original-expiration"),
            Some(&FieldValue::from("60000"))
        );
        assert_eq!(
            death.get("routing-keys"),
            Some(&FieldValue::Array(vec![
                FieldValue::from("new"),
                FieldValue::from("audit")
            ]))
        );
        assert_eq!(
            headers.get("x-first-death-reason"),
            Some(&FieldValue::from("expired"))
        );
        assert_eq!(
            headers.get("x-last-death-queue"),
            Some(&FieldValue::from("work"))
        );

        // The same queue and reason again: count 2, still one entry; another reason: new entry first.
        let (again, _) = dead_letter(
            &copy,
            Reason::Expired,
            &queue,
            &dlx,
            None,
            1_700_000_100_000,
        );
        let deaths = again.deaths.as_ref().unwrap();
        assert_eq!((deaths.entries.len(), deaths.entries[0].count), (1, 2));
        let (third, _) = dead_letter(
            &again,
            Reason::Rejected,
            &queue,
            &dlx,
            None,
            1_700_000_200_000,
        );
        let deaths = third.deaths.as_ref().unwrap();
        assert_eq!(deaths.entries[0].reason, Reason::Rejected);
        assert_eq!(deaths.first.0, Reason::Expired);
    }

    #[test]
    fn dead_letter_routing_key_replaces_the_keys_and_cycles_are_detected() {
        let message = published(None);
        let queue = ShortString::from_static("work");
        let dlx = ShortString::EMPTY;
        let key = ShortString::from_static("parking");
        let (copy, keys) = dead_letter(&message, Reason::Expired, &queue, &dlx, Some(&key), 0);
        assert_eq!(keys, ["parking"]);
        let deaths = copy.deaths.as_ref().unwrap();
        assert!(is_cycle(deaths, &queue));
        assert!(!is_cycle(deaths, &ShortString::from_static("parking")));
        let (rejected, _) = dead_letter(&message, Reason::Rejected, &queue, &dlx, None, 0);
        assert!(!is_cycle(rejected.deaths.as_ref().unwrap(), &queue));
    }
}

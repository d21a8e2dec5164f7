//! Queue and consumer arguments: validation with RabbitMQ's texts, and the typed settings a
//! classic queue runs with.
//!
//! Arguments are validated only when a queue is created (a redeclaration compares them instead,
//! see `vhost`), in RabbitMQ's fixed order, so that with several bad arguments the same one is
//! reported as RabbitMQ would. Texts follow `rabbit_amqqueue:check_arguments_type_and_value/3`:
//! `invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}`.

use warren_wire::{FieldTable, FieldValue, ShortString};

use crate::error::AmqpError;

/// The largest TTL or expiry RabbitMQ accepts: ten years in milliseconds.
pub const MAX_EXPIRY: u64 = 315_360_000_000;

/// What a queue does when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready message.
    #[default]
    DropHead,
    /// Refuse new messages (publishers in confirm mode get `basic.nack`).
    RejectPublish,
    /// Refuse and dead-letter new messages.
    RejectPublishDlx,
}

/// A classic queue's settings from its arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// `x-message-ttl`, in milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-expires`, in milliseconds.
    pub expires: Option<u64>,
    /// `x-max-length`.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes` (bodies only).
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange` (empty for the default exchange).
    pub dead_letter_exchange: Option<ShortString>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<ShortString>,
    /// `x-dead-letter-strategy=at-least-once` of a quorum queue (in effect with
    /// `x-overflow=reject-publish` only).
    pub dead_letter_at_least_once: bool,
    /// `x-max-priority`, clamped to 1..=255.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-consumer-timeout` of a quorum queue, in milliseconds.
    pub consumer_timeout: Option<u64>,
    /// `x-queue-type=quorum`: replicated by a Raft group.
    pub quorum: bool,
    /// `x-quorum-initial-group-size`.
    pub initial_group_size: Option<u64>,
    /// `x-delivery-limit` of a quorum queue (20 unless set; `None` when set to -1: no limit).
    pub delivery_limit: Option<u64>,
    /// `x-delayed-retry-type`, `-min` and `-max` of a quorum queue (RabbitMQ 4.3).
    pub delayed_retry: Option<super::quorum::state::DelayedRetry>,
}

impl QueueConfig {
    /// Whether the queue has a length limit.
    pub fn is_limited(&self) -> bool {
        self.max_length.is_some() || self.max_length_bytes.is_some()
    }
}

/// Arguments of other queue types, refused on classic queues.
const OTHER_TYPE_ARGUMENTS: &[&str] = &[
    "x-dead-letter-strategy",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-stream-filter-size-bytes",
];

/// Why an argument value was refused, rendered as Erlang prints RabbitMQ's error terms.
enum Invalid {
    Text(String),
    Term(String),
}

fn integer(value: &FieldValue) -> Result<i64, Invalid> {
    value
        .as_integer()
        .ok_or_else(|| Invalid::Text(format!("expected integer, got {}", type_name(value))))
}

fn non_negative(value: &FieldValue) -> Result<u64, Invalid> {
    let number = integer(value)?;
    u64::try_from(number).map_err(|_| Invalid::Term(format!("{{value_negative,{number}}}")))
}

fn expiry(value: &FieldValue) -> Result<u64, Invalid> {
    let number = non_negative(value)?;
    if number > MAX_EXPIRY {
        return Err(Invalid::Term(format!("{{value_too_large,{number}}}")));
    }
    Ok(number)
}

/// A TTL that must not be 0 (`x-expires`).
fn positive_expiry(value: &FieldValue) -> Result<u64, Invalid> {
    nonzero(expiry(value)?)
}

/// A count or duration that must not be 0 (`x-consumer-timeout`).
fn positive(value: &FieldValue) -> Result<u64, Invalid> {
    nonzero(non_negative(value)?)
}

fn nonzero(number: u64) -> Result<u64, Invalid> {
    match number {
        0 => Err(Invalid::Term("{value_zero,0}".into())),
        number => Ok(number),
    }
}

fn boolean(value: &FieldValue) -> Result<bool, Invalid> {
    match value {
        FieldValue::Boolean(flag) => Ok(*flag),
        other => Err(Invalid::Term(format!(
            "{{unacceptable_type,{}}}",
            type_name(other)
        ))),
    }
}

fn string(value: &FieldValue) -> Result<ShortString, Invalid> {
    match value {
        FieldValue::LongString(text) => ShortString::try_from(text.as_bytes())
            .map_err(|_| Invalid::Term("{value_too_long,longstr}".into())),
        other => Err(Invalid::Term(format!(
            "{{unacceptable_type,{}}}",
            type_name(other)
        ))),
    }
}

/// RabbitMQ's name for a field value type (`rabbit_binary_parser`).
pub(crate) fn type_name(value: &FieldValue) -> &'static str {
    match value {
        FieldValue::Boolean(_) => "bool",
        FieldValue::ShortShortInt(_) => "byte",
        FieldValue::ShortShortUInt(_) => "unsignedbyte",
        FieldValue::ShortInt(_) => "short",
        FieldValue::ShortUInt(_) => "unsignedshort",
        FieldValue::LongInt(_) => "signedint",
        FieldValue::LongUInt(_) => "unsignedint",
        FieldValue::LongLongInt(_) => "long",
        FieldValue::Float(_) => "float",
        FieldValue::Double(_) => "double",
        FieldValue::Decimal(_) => "decimal",
        FieldValue::LongString(_) => "longstr",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::ByteArray(_) => "binary",
        FieldValue::Void => "void",
    }
}

/// Validates the arguments of a new classic queue and returns its settings.
pub fn parse(
    arguments: &FieldTable,
    queue: &ShortString,
    vhost: &str,
) -> Result<QueueConfig, AmqpError> {
    let resource = format!("queue '{queue}' in vhost '{vhost}'");
    let invalid = |key: &str, why: Invalid| {
        let detail = match why {
            Invalid::Text(text) => format!("{text:?}"),
            Invalid::Term(term) => term,
        };
        AmqpError::precondition_failed(format!("invalid arg '{key}' for {resource}: {detail}"))
    };
    // The channel checks the dead-letter exchange's type before anything else.
    if let Some(value) = arguments.get("x-dead-letter-exchange")
        && !matches!(value, FieldValue::LongString(_))
    {
        return Err(AmqpError::precondition_failed(format!(
            "invalid type '{}' for arg 'x-dead-letter-exchange' in {resource}",
            type_name(value)
        )));
    }
    let quorum = matches!(
        arguments.get("x-queue-type"),
        Some(FieldValue::LongString(text)) if text.as_bytes() == b"quorum"
    );
    if quorum {
        return parse_quorum(arguments, &resource, invalid);
    }
    let mut config = QueueConfig::default();
    let get = |key: &str| arguments.get(key);
    if let Some(value) = get("x-expires") {
        config.expires = Some(positive_expiry(value).map_err(|why| invalid("x-expires", why))?);
    }
    if let Some(value) = get("x-message-ttl") {
        config.message_ttl = Some(expiry(value).map_err(|why| invalid("x-message-ttl", why))?);
    }
    if let Some(value) = get("x-dead-letter-exchange") {
        config.dead_letter_exchange =
            Some(string(value).map_err(|why| invalid("x-dead-letter-exchange", why))?);
    }
    if let Some(value) = get("x-dead-letter-routing-key") {
        let key = string(value).map_err(|why| invalid("x-dead-letter-routing-key", why))?;
        if config.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                Invalid::Term("routing_key_but_no_dlx_defined".into()),
            ));
        }
        config.dead_letter_routing_key = Some(key);
    }
    if let Some(value) = get("x-max-length") {
        config.max_length = Some(non_negative(value).map_err(|why| invalid("x-max-length", why))?);
    }
    if let Some(value) = get("x-max-length-bytes") {
        config.max_length_bytes =
            Some(non_negative(value).map_err(|why| invalid("x-max-length-bytes", why))?);
    }
    if let Some(value) = get("x-max-priority") {
        let priority = non_negative(value).map_err(|why| invalid("x-max-priority", why))?;
        if priority > 255 {
            return Err(invalid(
                "x-max-priority",
                Invalid::Term(format!("{{max_value_exceeded,{priority}}}")),
            ));
        }
        // RabbitMQ accepts 0 and runs it as 1.
        config.max_priority = Some(priority.clamp(1, 255) as u8);
    }
    if let Some(value) = get("x-overflow") {
        config.overflow = overflow(value).map_err(|why| invalid("x-overflow", why))?;
    }
    if let Some(value) = get("x-queue-mode") {
        match value {
            FieldValue::LongString(mode) if matches!(mode.as_bytes(), b"default" | b"lazy") => {}
            FieldValue::LongString(mode) => {
                return Err(invalid(
                    "x-queue-mode",
                    Invalid::Text(format!("unsupported queue mode '{mode}'")),
                ));
            }
            other => {
                return Err(invalid(
                    "x-queue-mode",
                    Invalid::Term(format!("{{unacceptable_type,{}}}", type_name(other))),
                ));
            }
        }
    }
    if let Some(value) = get("x-queue-version") {
        let version = integer(value).map_err(|why| invalid("x-queue-version", why))?;
        if version != 2 {
            return Err(invalid(
                "x-queue-version",
                Invalid::Text(format!("unsupported queue version '{version}'")),
            ));
        }
    }
    if let Some(value) = get("x-single-active-consumer") {
        config.single_active_consumer =
            boolean(value).map_err(|why| invalid("x-single-active-consumer", why))?;
    }
    if let Some(value) = get("x-queue-type") {
        match value {
            FieldValue::LongString(text) if text.as_bytes() == b"classic" => {}
            FieldValue::LongString(text) => {
                return Err(invalid(
                    "x-queue-type",
                    Invalid::Text(format!("unsupported queue type '{text}'")),
                ));
            }
            other => {
                return Err(invalid(
                    "x-queue-type",
                    Invalid::Term(format!("{{unacceptable_type,{}}}", type_name(other))),
                ));
            }
        }
    }
    if let Some(value) = get("x-queue-leader-locator") {
        leader_locator(value).map_err(|why| invalid("x-queue-leader-locator", why))?;
    }
    for (key, _) in arguments.iter() {
        if let Some(other) = OTHER_TYPE_ARGUMENTS
            .iter()
            .find(|name| key.as_bytes() == name.as_bytes())
        {
            return Err(AmqpError::precondition_failed(format!(
                "invalid arg '{other}' for {resource} of queue type rabbit_classic_queue"
            )));
        }
    }
    Ok(config)
}

/// Reads `x-overflow`: `drop-head`, `reject-publish` or `reject-publish-dlx`.
fn overflow(value: &FieldValue) -> Result<Overflow, Invalid> {
    match value {
        FieldValue::LongString(text) => match text.as_bytes() {
            b"drop-head" => Ok(Overflow::DropHead),
            b"reject-publish" => Ok(Overflow::RejectPublish),
            b"reject-publish-dlx" => Ok(Overflow::RejectPublishDlx),
            _ => Err(Invalid::Term("invalid_overflow".into())),
        },
        other => Err(Invalid::Term(format!(
            "{{unacceptable_type,{}}}",
            type_name(other)
        ))),
    }
}

/// Checks `x-queue-leader-locator`: `client-local` or `balanced`.
fn leader_locator(value: &FieldValue) -> Result<(), Invalid> {
    match value {
        FieldValue::LongString(locator)
            if matches!(locator.as_bytes(), b"client-local" | b"balanced") =>
        {
            Ok(())
        }
        FieldValue::LongString(_) => Err(Invalid::Term("invalid_queue_locator_arg".into())),
        other => Err(Invalid::Term(format!(
            "{{unacceptable_type,{}}}",
            type_name(other)
        ))),
    }
}

/// Arguments of classic queues and streams, refused on quorum queues.
const NOT_QUORUM_ARGUMENTS: &[&str] = &[
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-stream-filter-size-bytes",
];

/// The arguments of a quorum queue.
fn parse_quorum(
    arguments: &FieldTable,
    resource: &str,
    invalid: impl Fn(&str, Invalid) -> AmqpError,
) -> Result<QueueConfig, AmqpError> {
    let mut config = QueueConfig {
        quorum: true,
        delivery_limit: Some(u64::from(super::quorum::DEFAULT_DELIVERY_LIMIT)),
        ..QueueConfig::default()
    };
    let (mut retry_kind, mut retry_min, mut retry_max) = (None, None, None);
    for (key, value) in arguments.iter() {
        let key = String::from_utf8_lossy(key.as_bytes());
        match key.as_ref() {
            "x-queue-type" => {}
            "x-delayed-retry-type" => {
                use super::quorum::state::RetryKind;
                retry_kind = match value {
                    FieldValue::LongString(text) => match text.as_bytes() {
                        b"all" => Some(RetryKind::All),
                        b"failed" => Some(RetryKind::Failed),
                        b"returned" => Some(RetryKind::Returned),
                        b"disabled" => None,
                        other => {
                            return Err(invalid(
                                "x-delayed-retry-type",
                                Invalid::Term(format!(
                                    "\"{}\" is not a valid delayed retry type. Must be one of: \
                                     all, failed, returned, disabled",
                                    String::from_utf8_lossy(other)
                                )),
                            ));
                        }
                    },
                    other => {
                        return Err(invalid(
                            "x-delayed-retry-type",
                            Invalid::Term(format!("{{unacceptable_type,{}}}", type_name(other))),
                        ));
                    }
                };
            }
            "x-delayed-retry-min" => {
                retry_min =
                    Some(positive(value).map_err(|why| invalid("x-delayed-retry-min", why))?);
            }
            "x-delayed-retry-max" => {
                retry_max =
                    Some(positive(value).map_err(|why| invalid("x-delayed-retry-max", why))?);
            }
            // RabbitMQ 4.3: quorum queues always have priorities 0 to 31, and ignore it.
            "x-max-priority" => {}
            // Checked and ignored, as RabbitMQ's quorum queues do since bodies left memory.
            "x-max-in-memory-length" | "x-max-in-memory-bytes" => {
                non_negative(value).map_err(|why| invalid(&key, why))?;
            }
            "x-quorum-initial-group-size" => {
                config.initial_group_size = Some(
                    positive(value).map_err(|why| invalid("x-quorum-initial-group-size", why))?,
                );
            }
            "x-queue-leader-locator" => {
                leader_locator(value).map_err(|why| invalid("x-queue-leader-locator", why))?;
            }
            "x-delivery-limit" => {
                let limit = integer(value).map_err(|why| invalid("x-delivery-limit", why))?;
                // RabbitMQ 4: -1 turns the limit off.
                config.delivery_limit = match limit {
                    -1 => None,
                    limit => Some(u64::try_from(limit).map_err(|_| {
                        invalid(
                            "x-delivery-limit",
                            Invalid::Term(format!("{{value_negative,{limit}}}")),
                        )
                    })?),
                };
            }
            "x-dead-letter-exchange" => {
                config.dead_letter_exchange =
                    Some(string(value).map_err(|why| invalid("x-dead-letter-exchange", why))?);
            }
            "x-dead-letter-routing-key" => {
                config.dead_letter_routing_key =
                    Some(string(value).map_err(|why| invalid("x-dead-letter-routing-key", why))?);
            }
            "x-dead-letter-strategy" => match value {
                FieldValue::LongString(text) if text.as_bytes() == b"at-most-once" => {
                    config.dead_letter_at_least_once = false;
                }
                FieldValue::LongString(text) if text.as_bytes() == b"at-least-once" => {
                    config.dead_letter_at_least_once = true;
                }
                FieldValue::LongString(_) => {
                    return Err(invalid(
                        "x-dead-letter-strategy",
                        Invalid::Term("invalid_dead_letter_strategy".into()),
                    ));
                }
                other => {
                    return Err(invalid(
                        "x-dead-letter-strategy",
                        Invalid::Term(format!("{{unacceptable_type,{}}}", type_name(other))),
                    ));
                }
            },
            "x-max-length" => {
                config.max_length =
                    Some(non_negative(value).map_err(|why| invalid("x-max-length", why))?);
            }
            "x-consumer-timeout" => {
                config.consumer_timeout =
                    Some(positive(value).map_err(|why| invalid("x-consumer-timeout", why))?);
            }
            "x-single-active-consumer" => {
                config.single_active_consumer =
                    boolean(value).map_err(|why| invalid("x-single-active-consumer", why))?;
            }
            "x-message-ttl" => {
                config.message_ttl =
                    Some(expiry(value).map_err(|why| invalid("x-message-ttl", why))?);
            }
            "x-expires" => {
                config.expires =
                    Some(positive_expiry(value).map_err(|why| invalid("x-expires", why))?);
            }
            "x-max-length-bytes" => {
                config.max_length_bytes =
                    Some(non_negative(value).map_err(|why| invalid("x-max-length-bytes", why))?);
            }
            "x-overflow" => {
                config.overflow = overflow(value).map_err(|why| invalid("x-overflow", why))?;
                if config.overflow == Overflow::RejectPublishDlx {
                    return Err(AmqpError::precondition_failed(format!(
                        "invalid arg 'x-overflow' for {resource}: reject-publish-dlx \
                         is not supported by quorum queues"
                    )));
                }
            }
            key if NOT_QUORUM_ARGUMENTS.contains(&key) => {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid arg '{key}' for {resource} of queue type rabbit_quorum_queue"
                )));
            }
            // RabbitMQ's quorum queues take these; Warren's do not enforce them yet, and
            // taking them silently would promise what does not happen.
            key => {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid arg '{key}' for {resource}: not supported by Warren's quorum queues yet"
                )));
            }
        }
    }
    if config.dead_letter_routing_key.is_some() && config.dead_letter_exchange.is_none() {
        return Err(invalid(
            "x-dead-letter-routing-key",
            Invalid::Term("routing_key_but_no_dlx_defined".into()),
        ));
    }
    if let Some(kind) = retry_kind {
        let Some(min) = retry_min else {
            return Err(invalid(
                "x-delayed-retry-min",
                Invalid::Term(format!(
                    "required when x-delayed-retry-type is {}",
                    match kind {
                        super::quorum::state::RetryKind::All => "all",
                        super::quorum::state::RetryKind::Failed => "failed",
                        super::quorum::state::RetryKind::Returned => "returned",
                    }
                )),
            ));
        };
        let max = retry_max.unwrap_or(min);
        if max < min {
            return Err(invalid(
                "x-delayed-retry-max",
                Invalid::Term(format!(
                    "x-delayed-retry-max ({max}) must not be smaller than x-delayed-retry-min \
                     ({min})"
                )),
            ));
        }
        config.delayed_retry = Some(super::quorum::state::DelayedRetry { kind, min, max });
    }
    Ok(config)
}

/// Consumer arguments classic and quorum queues refuse (they belong to streams).
const OTHER_TYPE_CONSUMER_ARGUMENTS: &[&str] = &[
    "x-stream-offset",
    "x-stream-filter",
    "x-stream-match-unfiltered",
];

/// Validates `basic.consume` arguments for a classic queue; returns the consumer's priority
/// (`x-priority`, 0 when absent).
pub fn consumer_priority(
    arguments: &FieldTable,
    queue: &ShortString,
    vhost: &str,
) -> Result<i64, AmqpError> {
    consumer_arguments(arguments, queue, vhost, false)
}

/// Validates `basic.consume` arguments as RabbitMQ's queue type does (`quorum`: a quorum
/// queue's, else a classic queue's); returns the consumer's priority (`x-priority`, 0 when
/// absent).
pub fn consumer_arguments(
    arguments: &FieldTable,
    queue: &ShortString,
    vhost: &str,
    quorum: bool,
) -> Result<i64, AmqpError> {
    let resource = format!("queue '{queue}' in vhost '{vhost}'");
    let priority = match arguments.get("x-priority") {
        None => 0,
        Some(value) => value.as_integer().ok_or_else(|| {
            AmqpError::precondition_failed(format!(
                "invalid arg 'x-priority' for {resource}: \"expected integer, got {}\"",
                type_name(value)
            ))
        })?,
    };
    if let Some(value) = arguments.get("x-consumer-timeout") {
        // RabbitMQ's quorum queues take any non-negative integer; classic queues here take a
        // positive one.
        let refused = match (value.as_integer(), quorum) {
            (None, true) => Some(format!("\"expected integer, got {}\"", type_name(value))),
            (Some(ms), true) if ms < 0 => Some(format!("{{value_negative,{ms}}}")),
            (ms, false) if ms.is_none_or(|ms| ms <= 0) => Some(format!(
                "\"expected a positive integer, got {}\"",
                type_name(value)
            )),
            _ => None,
        };
        if let Some(why) = refused {
            return Err(AmqpError::precondition_failed(format!(
                "invalid arg 'x-consumer-timeout' for {resource}: {why}"
            )));
        }
    }
    let kind = if quorum {
        "rabbit_quorum_queue"
    } else {
        "rabbit_classic_queue"
    };
    for (key, _) in arguments.iter() {
        if let Some(other) = OTHER_TYPE_CONSUMER_ARGUMENTS
            .iter()
            .find(|name| key.as_bytes() == name.as_bytes())
        {
            return Err(AmqpError::precondition_failed(format!(
                "invalid arg '{other}' for {resource} of queue type {kind}"
            )));
        }
    }
    Ok(priority)
}

/// Validates an exchange's `alternate-exchange` argument type.
pub fn check_alternate_exchange(
    arguments: &FieldTable,
    exchange: &ShortString,
    vhost: &str,
) -> Result<(), AmqpError> {
    match arguments.get("alternate-exchange") {
        None | Some(FieldValue::LongString(_)) => Ok(()),
        Some(other) => Err(AmqpError::precondition_failed(format!(
            "invalid type '{}' for arg 'alternate-exchange' in exchange '{exchange}' in vhost '{vhost}'",
            type_name(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries
            .iter()
            .map(|(key, value)| (ShortString::try_from(*key).unwrap(), value.clone()))
            .collect()
    }

    fn error(entries: &[(&str, FieldValue)]) -> String {
        parse(&args(entries), &ShortString::from_static("q"), "/")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn texts_follow_rabbitmq() {
        let prefix = "PRECONDITION_FAILED - invalid arg";
        let cases: Vec<(Vec<(&str, FieldValue)>, String)> = vec![
            (vec![("x-max-length", "10".into())], format!("{prefix} 'x-max-length' for queue 'q' in vhost '/': \"expected integer, got longstr\"")),
            (vec![("x-max-length", FieldValue::LongInt(-1))], format!("{prefix} 'x-max-length' for queue 'q' in vhost '/': {{value_negative,-1}}")),
            (vec![("x-expires", FieldValue::LongInt(0))], format!("{prefix} 'x-expires' for queue 'q' in vhost '/': {{value_zero,0}}")),
            (vec![("x-message-ttl", FieldValue::LongLongInt(315_360_000_001))], format!("{prefix} 'x-message-ttl' for queue 'q' in vhost '/': {{value_too_large,315360000001}}")),
            (vec![("x-max-priority", FieldValue::LongInt(256))], format!("{prefix} 'x-max-priority' for queue 'q' in vhost '/': {{max_value_exceeded,256}}")),
            (vec![("x-single-active-consumer", "yes".into())], format!("{prefix} 'x-single-active-consumer' for queue 'q' in vhost '/': {{unacceptable_type,longstr}}")),
            (vec![("x-dead-letter-routing-key", "k".into())], format!("{prefix} 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined")),
            (vec![("x-overflow", "explode".into())], format!("{prefix} 'x-overflow' for queue 'q' in vhost '/': invalid_overflow")),
            (vec![("x-queue-version", FieldValue::LongInt(1))], format!("{prefix} 'x-queue-version' for queue 'q' in vhost '/': \"unsupported queue version '1'\"")),
            (vec![("x-delivery-limit", FieldValue::LongInt(3))], format!("{prefix} 'x-delivery-limit' for queue 'q' in vhost '/' of queue type rabbit_classic_queue")),
            (vec![("x-dead-letter-exchange", FieldValue::LongInt(1))], "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'".into()),
        ];
        for (entries, expected) in cases {
            assert_eq!(error(&entries), expected);
        }
        // The first bad argument in RabbitMQ's order is reported, whatever the table order.
        assert!(
            error(&[
                ("x-max-length", FieldValue::LongInt(-1)),
                ("x-expires", FieldValue::LongInt(0))
            ])
            .contains("'x-expires'")
        );
    }

    #[test]
    fn good_arguments_become_settings() {
        let config = parse(
            &args(&[
                ("x-message-ttl", FieldValue::ShortShortUInt(0)),
                ("x-expires", FieldValue::LongLongInt(1000)),
                ("x-max-length", FieldValue::ShortUInt(5)),
                ("x-overflow", "reject-publish-dlx".into()),
                ("x-dead-letter-exchange", "".into()),
                ("x-dead-letter-routing-key", "dead".into()),
                ("x-max-priority", FieldValue::LongInt(0)),
                ("x-single-active-consumer", FieldValue::Boolean(true)),
                ("x-unknown", "ignored".into()),
            ]),
            &ShortString::from_static("q"),
            "/",
        )
        .unwrap();
        assert_eq!(config.message_ttl, Some(0));
        assert_eq!(config.expires, Some(1000));
        assert_eq!(config.max_length, Some(5));
        assert_eq!(config.overflow, Overflow::RejectPublishDlx);
        assert_eq!(config.dead_letter_exchange, Some(ShortString::EMPTY));
        assert_eq!(config.max_priority, Some(1));
        assert!(config.single_active_consumer);
    }

    #[test]
    fn delayed_retry_arguments_of_quorum_queues() {
        use crate::queue::quorum::state::{DelayedRetry, RetryKind};
        let queue = ShortString::from_static("q");
        let quorum = |extra: &[(&str, FieldValue)]| {
            let mut all = vec![("x-queue-type", FieldValue::from("quorum"))];
            all.extend(extra.iter().cloned());
            parse(&args(&all), &queue, "/")
        };
        let config = quorum(&[
            ("x-delayed-retry-type", "failed".into()),
            ("x-delayed-retry-min", FieldValue::LongInt(100)),
        ])
        .unwrap();
        assert_eq!(
            config.delayed_retry,
            Some(DelayedRetry {
                kind: RetryKind::Failed,
                min: 100,
                max: 100
            })
        );
        assert_eq!(
            quorum(&[("x-delayed-retry-type", "disabled".into())])
                .unwrap()
                .delayed_retry,
            None
        );
        let prefix = "PRECONDITION_FAILED - invalid arg";
        for (extra, text) in [
            (
                vec![("x-delayed-retry-type", FieldValue::from("sometimes"))],
                format!(
                    "{prefix} 'x-delayed-retry-type' for queue 'q' in vhost '/': \"sometimes\" \
                     is not a valid delayed retry type. Must be one of: all, failed, returned, \
                     disabled"
                ),
            ),
            (
                vec![("x-delayed-retry-type", FieldValue::from("all"))],
                format!(
                    "{prefix} 'x-delayed-retry-min' for queue 'q' in vhost '/': required when \
                     x-delayed-retry-type is all"
                ),
            ),
            (
                vec![
                    ("x-delayed-retry-type", FieldValue::from("returned")),
                    ("x-delayed-retry-min", FieldValue::LongInt(500)),
                    ("x-delayed-retry-max", FieldValue::LongInt(100)),
                ],
                format!(
                    "{prefix} 'x-delayed-retry-max' for queue 'q' in vhost '/': \
                     x-delayed-retry-max (100) must not be smaller than x-delayed-retry-min (500)"
                ),
            ),
            (
                vec![("x-delayed-retry-min", FieldValue::LongInt(0))],
                format!(
                    "{prefix} 'x-delayed-retry-min' for queue 'q' in vhost '/': {{value_zero,0}}"
                ),
            ),
        ] {
            assert_eq!(quorum(&extra).unwrap_err().to_string(), text);
        }
    }

    #[test]
    fn consumer_arguments() {
        let queue = ShortString::from_static("q");
        assert_eq!(
            consumer_priority(
                &args(&[("x-priority", FieldValue::LongInt(-3))]),
                &queue,
                "/"
            )
            .unwrap(),
            -3
        );
        assert_eq!(
            consumer_priority(&args(&[("x-priority", "high".into())]), &queue, "/")
                .unwrap_err()
                .to_string(),
            "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'q' in vhost '/': \"expected integer, got longstr\""
        );
        assert!(
            consumer_priority(
                &args(&[("x-stream-offset", FieldValue::LongInt(1))]),
                &queue,
                "/"
            )
            .is_err()
        );
    }
}

//! Redeclaration equivalence: comparing a declaration's arguments with the existing entity's
//! as RabbitMQ does, and describing values in RabbitMQ's words for the 406 it sends.

use warren_wire::{FieldTable, FieldValue};

use crate::error::AmqpError;

pub(super) fn quoted(value: impl std::fmt::Display) -> String {
    format!("'{value}'")
}

/// Compares one argument of a redeclaration as RabbitMQ does: integers with integers and
/// floats with floats by value, other types by type and value; `x-queue-type` absent equals
/// `classic`.
pub(super) fn compare_argument(
    key: &str,
    received: &FieldTable,
    current: &FieldTable,
    resource: &str,
) -> Result<(), AmqpError> {
    let classic = FieldValue::from("classic");
    let normalise = |value: Option<&FieldValue>| -> Option<FieldValue> {
        match (key, value) {
            ("x-queue-type", None) => Some(classic.clone()),
            (_, value) => value.cloned(),
        }
    };
    let received = normalise(received.get(key));
    let current = normalise(current.get(key));
    let equivalent = match (&received, &current) {
        (None, None) => true,
        (Some(a), Some(b)) => match (a.as_integer(), b.as_integer()) {
            (Some(a), Some(b)) => a == b,
            _ => a == b,
        },
        _ => false,
    };
    if equivalent {
        return Ok(());
    }
    // RabbitMQ prints bare values when both sides have one, typed values otherwise
    // (rabbit_misc:assert_args_equivalence1 and val/1).
    let (received, current) = match (&received, &current) {
        (Some(a), Some(b)) => (
            format!("'{}'", bare_value(a)),
            format!("'{}'", bare_value(b)),
        ),
        _ => (
            describe_value(received.as_ref()),
            describe_value(current.as_ref()),
        ),
    };
    Err(AmqpError::precondition_failed(format!(
        "inequivalent arg '{key}' for {resource}: received {received} but current is {current}"
    )))
}

/// A value as Erlang prints it bare (`~ts` for binaries, `~tp` otherwise).
fn bare_value(value: &FieldValue) -> String {
    let described = describe_value(Some(value));
    // "the value 'X' of type 'T'" -> X
    described
        .strip_prefix("the value '")
        .and_then(|rest| rest.rsplit_once("' of type '"))
        .map_or(described.clone(), |(text, _)| text.to_string())
}

/// RabbitMQ's `val/1`: `none`, or `the value '1000' of type 'long'`.
pub(crate) fn describe_value(value: Option<&FieldValue>) -> String {
    let Some(value) = value else {
        return "none".into();
    };
    let (text, kind) = match value {
        FieldValue::Boolean(v) => (v.to_string(), "bool"),
        FieldValue::ShortShortInt(v) => (v.to_string(), "byte"),
        FieldValue::ShortShortUInt(v) => (v.to_string(), "unsignedbyte"),
        FieldValue::ShortInt(v) => (v.to_string(), "short"),
        FieldValue::ShortUInt(v) => (v.to_string(), "unsignedshort"),
        FieldValue::LongInt(v) => (v.to_string(), "signedint"),
        FieldValue::LongUInt(v) => (v.to_string(), "unsignedint"),
        FieldValue::LongLongInt(v) => (v.to_string(), "long"),
        FieldValue::Float(v) => (v.to_string(), "float"),
        FieldValue::Double(v) => (v.to_string(), "double"),
        FieldValue::Decimal(v) => (format!("{{{},{}}}", v.scale, v.value), "decimal"),
        FieldValue::LongString(v) => (v.to_string(), "longstr"),
        FieldValue::Array(_) => ("[...]".into(), "array"),
        FieldValue::Timestamp(v) => (v.to_string(), "timestamp"),
        FieldValue::Table(_) => ("[...]".into(), "table"),
        FieldValue::ByteArray(v) => (String::from_utf8_lossy(v).into_owned(), "binary"),
        FieldValue::Void => ("undefined".into(), "void"),
    };
    format!("the value '{text}' of type '{kind}'")
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_wire::ShortString;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries
            .iter()
            .map(|(key, value)| (ShortString::try_from(*key).unwrap(), value.clone()))
            .collect()
    }

    #[test]
    fn argument_equivalence_follows_rabbitmq() {
        let resource = "queue 'q' in vhost '/'";
        let long = table(&[("x-message-ttl", FieldValue::LongLongInt(1000))]);
        let int = table(&[("x-message-ttl", FieldValue::LongInt(1000))]);
        let string = table(&[("x-message-ttl", "1000".into())]);
        assert!(compare_argument("x-message-ttl", &int, &long, resource).is_ok());
        assert_eq!(
            compare_argument("x-message-ttl", &string, &long, resource)
                .unwrap_err()
                .to_string(),
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '1000' but current is '1000'"
        );
        assert_eq!(
            compare_argument("x-message-ttl", &FieldTable::new(), &long, resource)
                .unwrap_err()
                .to_string(),
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received none but current is the value '1000' of type 'long'"
        );
        let classic = table(&[("x-queue-type", "classic".into())]);
        assert!(compare_argument("x-queue-type", &classic, &FieldTable::new(), resource).is_ok());
    }
}

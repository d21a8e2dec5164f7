//! Headers routing: `x-match` = `all`, `any`, `all-with-x` or `any-with-x` over the binding's
//! arguments and the message's `headers` table.
//!
//! As in RabbitMQ: `all` and `any` skip binding arguments whose names start with `x-`; the
//! `-with-x` forms compare them too. A void binding value matches any value under that name.
//! Values compare as Erlang's `==` does: numbers by value whatever their width or signedness
//! (1 as a byte equals 1 as a long, and 1 equals 1.0), everything else by type and content.

use warren_wire::{FieldTable, FieldValue, ShortString};

use crate::error::AmqpError;

/// How a headers binding matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchMode {
    /// Every argument must match.
    All,
    /// At least one argument must match.
    Any,
}

/// A headers binding's arguments, prepared for matching.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadersMatch {
    mode: MatchMode,
    arguments: Vec<(ShortString, FieldValue)>,
}

impl HeadersMatch {
    /// Reads `x-match` and the arguments to compare; refuses an unknown `x-match`.
    pub fn new(arguments: &FieldTable) -> Result<HeadersMatch, AmqpError> {
        let (mode, with_x) = match arguments.get("x-match") {
            None => (MatchMode::All, false),
            Some(value) => match value.as_bytes() {
                Some(b"all") => (MatchMode::All, false),
                Some(b"any") => (MatchMode::Any, false),
                Some(b"all-with-x") => (MatchMode::All, true),
                Some(b"any-with-x") => (MatchMode::Any, true),
                _ => {
                    return Err(AmqpError::precondition_failed(format!(
                        "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
                        erlang_term(value)
                    )));
                }
            },
        };
        let arguments = arguments
            .iter()
            .filter(|(name, _)| name.as_bytes() != b"x-match")
            .filter(|(name, _)| with_x || !name.as_bytes().starts_with(b"x-"))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        Ok(HeadersMatch { mode, arguments })
    }

    /// Whether a message with these headers matches.
    pub fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let matches_one = |(name, expected): &(ShortString, FieldValue)| {
            headers
                .and_then(|headers| headers.iter().find(|(key, _)| *key == name))
                .is_some_and(|(_, actual)| {
                    matches!(expected, FieldValue::Void) || values_equal(expected, actual)
                })
        };
        match self.mode {
            MatchMode::All => self.arguments.iter().all(matches_one),
            MatchMode::Any => self.arguments.iter().any(matches_one),
        }
    }
}

/// Erlang's `==` on AMQP values.
fn values_equal(a: &FieldValue, b: &FieldValue) -> bool {
    if let (Some(a), Some(b)) = (number(a), number(b)) {
        return match (a, b) {
            (Number::Integer(a), Number::Integer(b)) => a == b,
            (a, b) => a.as_f64() == b.as_f64(),
        };
    }
    match (a, b) {
        (FieldValue::LongString(a), FieldValue::LongString(b)) => a == b,
        (FieldValue::ByteArray(a), FieldValue::ByteArray(b)) => a == b,
        (FieldValue::Array(a), FieldValue::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| values_equal(a, b))
        }
        (FieldValue::Table(a), FieldValue::Table(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b.iter())
                    .all(|((ka, va), (kb, vb))| ka == kb && values_equal(va, vb))
        }
        (a, b) => a == b,
    }
}

#[derive(Clone, Copy)]
enum Number {
    Integer(i128),
    Float(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Number::Integer(value) => value as f64,
            Number::Float(value) => value,
        }
    }
}

fn number(value: &FieldValue) -> Option<Number> {
    match *value {
        FieldValue::Float(value) => Some(Number::Float(f64::from(value))),
        FieldValue::Double(value) => Some(Number::Float(value)),
        FieldValue::Timestamp(_) | FieldValue::Decimal(_) => None,
        _ => value
            .as_integer()
            .map(|value| Number::Integer(i128::from(value))),
    }
}

/// How Erlang prints a binding argument value in RabbitMQ's error texts (`<<"some">>`).
fn erlang_term(value: &FieldValue) -> String {
    match value {
        FieldValue::LongString(text) => format!("<<\"{text}\">>"),
        FieldValue::ByteArray(bytes) => format!("<<\"{}\">>", String::from_utf8_lossy(bytes)),
        other => match other.as_integer() {
            Some(number) => number.to_string(),
            None => format!("{other:?}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries
            .iter()
            .map(|(key, value)| (ShortString::try_from(*key).unwrap(), value.clone()))
            .collect()
    }

    #[test]
    fn all_any_and_with_x() {
        let headers = table(&[
            ("format", "pdf".into()),
            ("type", "report".into()),
            ("x-tag", "a".into()),
        ]);
        let all = HeadersMatch::new(&table(&[
            ("x-match", "all".into()),
            ("format", "pdf".into()),
            ("type", "report".into()),
        ]))
        .unwrap();
        assert!(all.matches(Some(&headers)));
        let all_missing = HeadersMatch::new(&table(&[
            ("format", "pdf".into()),
            ("size", FieldValue::LongInt(1)),
        ]))
        .unwrap();
        assert!(!all_missing.matches(Some(&headers)));
        let any = HeadersMatch::new(&table(&[
            ("x-match", "any".into()),
            ("format", "zip".into()),
            ("type", "report".into()),
        ]))
        .unwrap();
        assert!(any.matches(Some(&headers)));
        // x- arguments are ignored by all/any: {x-match: any, x-tag: a} never matches...
        let any_x_only =
            HeadersMatch::new(&table(&[("x-match", "any".into()), ("x-tag", "a".into())])).unwrap();
        assert!(!any_x_only.matches(Some(&headers)));
        // ...and compared by any-with-x.
        let any_with_x = HeadersMatch::new(&table(&[
            ("x-match", "any-with-x".into()),
            ("x-tag", "a".into()),
        ]))
        .unwrap();
        assert!(any_with_x.matches(Some(&headers)));
        let all_with_x = HeadersMatch::new(&table(&[
            ("x-match", "all-with-x".into()),
            ("x-tag", "b".into()),
        ]))
        .unwrap();
        assert!(!all_with_x.matches(Some(&headers)));
        // {x-match: all} with nothing else matches everything, even no headers at all.
        let all_empty = HeadersMatch::new(&table(&[("x-match", "all".into())])).unwrap();
        assert!(all_empty.matches(None));
    }

    #[test]
    fn values_compare_like_erlang() {
        let headers = table(&[
            ("n", FieldValue::ShortShortInt(1)),
            ("s", "1".into()),
            ("f", FieldValue::Double(2.0)),
        ]);
        let int_width = HeadersMatch::new(&table(&[("n", FieldValue::LongLongInt(1))])).unwrap();
        assert!(int_width.matches(Some(&headers)));
        let string_vs_int = HeadersMatch::new(&table(&[("s", FieldValue::LongInt(1))])).unwrap();
        assert!(!string_vs_int.matches(Some(&headers)));
        let float_vs_int = HeadersMatch::new(&table(&[("f", FieldValue::LongInt(2))])).unwrap();
        assert!(float_vs_int.matches(Some(&headers)));
        let void = HeadersMatch::new(&table(&[("s", FieldValue::Void)])).unwrap();
        assert!(void.matches(Some(&headers)));
    }

    #[test]
    fn unknown_x_match_is_refused_with_rabbitmqs_text() {
        let error = HeadersMatch::new(&table(&[("x-match", "some".into())])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "PRECONDITION_FAILED - Invalid x-match field value <<\"some\">>; expected all, any, all-with-x, or any-with-x"
        );
    }
}

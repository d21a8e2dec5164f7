//! AMQP field tables as the management API writes and reads them in JSON.
//!
//! As RabbitMQ's `rabbit_mgmt_format`: out, numbers are numbers, strings are strings (byte
//! arrays and strings that are not UTF-8 too, lossily), tables are objects, arrays are arrays,
//! timestamps their seconds, void `null`. In, a JSON integer becomes a signed 64-bit long, a
//! fraction a double, text a long string, `true`/`false` a boolean, a list an array, an object
//! a table, `null` void.

use serde_json::{Map, Number, Value};
use warren_wire::{FieldTable, FieldValue, ShortString};

/// A table as JSON.
pub fn table_to_json(table: &FieldTable) -> Value {
    let mut object = Map::new();
    for (key, value) in table.iter() {
        object.insert(key.to_string(), value_to_json(value));
    }
    Value::Object(object)
}

fn value_to_json(value: &FieldValue) -> Value {
    match value {
        FieldValue::Boolean(value) => Value::Bool(*value),
        FieldValue::ShortShortInt(value) => (*value).into(),
        FieldValue::ShortShortUInt(value) => (*value).into(),
        FieldValue::ShortInt(value) => (*value).into(),
        FieldValue::ShortUInt(value) => (*value).into(),
        FieldValue::LongInt(value) => (*value).into(),
        FieldValue::LongUInt(value) => (*value).into(),
        FieldValue::LongLongInt(value) => (*value).into(),
        FieldValue::Float(value) => {
            Number::from_f64(f64::from(*value)).map_or(Value::Null, Value::Number)
        }
        FieldValue::Double(value) => Number::from_f64(*value).map_or(Value::Null, Value::Number),
        FieldValue::Decimal(decimal) => {
            let value = f64::from(decimal.value) / 10f64.powi(i32::from(decimal.scale));
            Number::from_f64(value).map_or(Value::Null, Value::Number)
        }
        FieldValue::LongString(text) => {
            Value::String(String::from_utf8_lossy(text.as_bytes()).into_owned())
        }
        FieldValue::Array(values) => Value::Array(values.iter().map(value_to_json).collect()),
        FieldValue::Timestamp(seconds) => (*seconds).into(),
        FieldValue::Table(table) => table_to_json(table),
        FieldValue::ByteArray(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        FieldValue::Void => Value::Null,
    }
}

/// A JSON object as a table; `what` names it in the error (`arguments`, `headers`).
pub fn json_to_table(value: &Value, what: &str) -> Result<FieldTable, String> {
    match value {
        Value::Null => Ok(FieldTable::new()),
        Value::Object(object) => {
            let mut table = FieldTable::new();
            for (key, value) in object {
                let name = ShortString::try_from(key.as_str())
                    .map_err(|_| format!("{what}: the key '{key}' is longer than 255 bytes"))?;
                table.insert(name, json_to_value(value));
            }
            Ok(table)
        }
        other => Err(format!("{what} must be an object, not {other}")),
    }
}

fn json_to_value(value: &Value) -> FieldValue {
    match value {
        Value::Null => FieldValue::Void,
        Value::Bool(value) => FieldValue::Boolean(*value),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => FieldValue::LongLongInt(integer),
            None => FieldValue::Double(number.as_f64().unwrap_or(0.0)),
        },
        Value::String(text) => FieldValue::LongString(text.as_bytes().to_vec().into()),
        Value::Array(values) => FieldValue::Array(values.iter().map(json_to_value).collect()),
        Value::Object(_) => FieldValue::Table(json_to_table(value, "table").unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_go_to_json_and_back() {
        let value = json!({
            "x-max-length": 10,
            "x-queue-type": "quorum",
            "flag": true,
            "ratio": 0.5,
            "list": [1, "a"],
            "nested": {"k": "v"},
            "nothing": null,
        });
        let table = json_to_table(&value, "arguments").unwrap();
        assert_eq!(
            table.get("x-max-length"),
            Some(&FieldValue::LongLongInt(10))
        );
        assert_eq!(table_to_json(&table), value);
        assert!(json_to_table(&json!([1]), "arguments").is_err());
        assert_eq!(
            json_to_table(&Value::Null, "arguments").unwrap(),
            FieldTable::new()
        );
    }
}

//! Conversions between `google.protobuf.Struct` (how payloads and filters travel in protobuf) and
//! `serde_json` values (how the HTTP API, the storage engine and the filter parser see them).
//!
//! The one piece of hand-written logic in this crate: both servers need exactly the same mapping, so
//! that a payload or filter means the same thing whichever transport carried it.
//!
//! Numbers: protobuf carries every number as an f64. An integral value of magnitude at most 2^53 comes
//! back as a JSON integer, so `{"n": 5}` sent over HTTP and `n: 5.0` sent over gRPC are stored and
//! matched alike. NaN and the infinities have no JSON form and are refused.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Number};

/// Largest integer every f64 represents exactly.
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// Why a value could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// A number was NaN or infinite.
    #[error("field {path} is not a finite number")]
    NonFinite {
        /// Dotted path of the field.
        path: String,
    },
    /// A `Value` with no kind set.
    #[error("field {path} has no value")]
    Empty {
        /// Dotted path of the field.
        path: String,
    },
    /// A JSON value that is not an object where an object is required.
    #[error("expected a JSON object")]
    NotAnObject,
}

/// A `Struct` as a JSON object.
pub fn struct_to_json(value: &Struct) -> Result<Map<String, serde_json::Value>, JsonError> {
    let mut out = Map::new();
    for (key, field) in &value.fields {
        out.insert(key.clone(), value_to_json(field, key)?);
    }
    Ok(out)
}

fn value_to_json(value: &Value, path: &str) -> Result<serde_json::Value, JsonError> {
    Ok(match &value.kind {
        None => {
            return Err(JsonError::Empty {
                path: path.to_owned(),
            });
        }
        Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => number_to_json(*n, path)?,
        Some(Kind::StructValue(s)) => {
            let mut out = Map::new();
            for (key, field) in &s.fields {
                out.insert(key.clone(), value_to_json(field, &format!("{path}.{key}"))?);
            }
            serde_json::Value::Object(out)
        }
        Some(Kind::ListValue(list)) => serde_json::Value::Array(
            list.values
                .iter()
                .enumerate()
                .map(|(i, v)| value_to_json(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn number_to_json(n: f64, path: &str) -> Result<serde_json::Value, JsonError> {
    if !n.is_finite() {
        return Err(JsonError::NonFinite {
            path: path.to_owned(),
        });
    }
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INT {
        // Exact: the value is integral and within the range where f64 and i64 agree.
        return Ok(serde_json::Value::Number(Number::from(n as i64)));
    }
    Number::from_f64(n)
        .map(serde_json::Value::Number)
        .ok_or_else(|| JsonError::NonFinite {
            path: path.to_owned(),
        })
}

/// A JSON object as a `Struct`. Numbers become f64 (integers beyond 2^53 lose precision, as in
/// protobuf's own JSON mapping).
pub fn json_to_struct(value: &serde_json::Value) -> Result<Struct, JsonError> {
    match value {
        serde_json::Value::Object(map) => Ok(map_to_struct(map)),
        _ => Err(JsonError::NotAnObject),
    }
}

/// A JSON object map as a `Struct`.
pub fn map_to_struct(map: &Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(value: &serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        // serde_json numbers are always finite.
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(map_to_struct(map)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_keeps_integers_integral() {
        let original = json!({"n": 5, "f": 2.5, "s": "x", "b": true, "z": null,
                              "l": [1, "a", {"k": -3}], "o": {"deep": {"x": 1e300}}});
        let back = struct_to_json(&json_to_struct(&original).unwrap()).unwrap();
        assert_eq!(serde_json::Value::Object(back), original);
    }

    #[test]
    fn non_finite_and_empty_values_are_refused_with_their_path() {
        let mut s = json_to_struct(&json!({"a": {"b": 1}})).unwrap();
        if let Some(Kind::StructValue(inner)) = &mut s.fields.get_mut("a").unwrap().kind {
            inner.fields.get_mut("b").unwrap().kind = Some(Kind::NumberValue(f64::NAN));
        }
        assert_eq!(
            struct_to_json(&s).unwrap_err().to_string(),
            "field a.b is not a finite number"
        );
        let empty = Struct {
            fields: [("x".to_owned(), Value { kind: None })].into(),
        };
        assert_eq!(
            struct_to_json(&empty).unwrap_err().to_string(),
            "field x has no value"
        );
        assert_eq!(
            json_to_struct(&json!([1])).unwrap_err(),
            JsonError::NotAnObject
        );
    }
}

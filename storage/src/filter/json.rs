//! JSON plumbing shared by payloads and filters: a strict parse, a depth pre-scan and value descriptions.
//!
//! Both payloads and filters arrive as bytes from the network, so the parse here is stricter than
//! `serde_json::from_slice::<Value>`: duplicate object keys are an error (a silently dropped
//! `"must"` would widen a filter), and nesting depth is checked on the raw bytes before anything is
//! allocated.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Longest string quoted verbatim in an error message, in characters.
const MAX_QUOTED_CHARS: usize = 40;

/// A `serde_json::Value` deserialized with duplicate object keys rejected.
pub(super) struct StrictValue(pub(super) Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StrictValue, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

/// A JSON object deserialized with duplicate keys rejected at every level, for request bodies that
/// carry filters and payloads inside a larger document (`serde_json::Map` would keep the last of
/// two `"must"` keys and silently widen a filter).
#[derive(Debug, Clone, PartialEq)]
pub struct StrictObject(pub Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StrictObject, D::Error> {
        match deserializer.deserialize_any(StrictVisitor)? {
            Value::Object(map) => Ok(StrictObject(map)),
            other => Err(de::Error::custom(format_args!(
                "expected a JSON object, got {}",
                describe(&other)
            ))),
        }
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // serde_json never produces a non-finite number, but other deserializers can.
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format_args!("{v} is not a finite number")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(deserializer).map(|v| v.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // The size hint comes from the input, so it only caps the preallocation.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {}",
                    quote(&key)
                )));
            }
            let StrictValue(value) = access.next_value()?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// Parses bytes into a value, rejecting duplicate keys and trailing data.
///
/// serde_json limits recursion to 128 levels, so this never overflows the stack; callers run
/// [`first_too_deep`] first to apply their own, smaller limit with a better message.
pub(super) fn parse(bytes: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice::<StrictValue>(bytes) {
        Ok(StrictValue(value)) => Ok(value),
        // Data errors are ours (duplicate keys) and read well on their own.
        Err(err) if err.classify() == serde_json::error::Category::Data => Err(err.to_string()),
        Err(err) => Err(format!("malformed JSON: {err}")),
    }
}

/// Byte offset of the first `[` or `{` that opens a container nested deeper than `max_depth`.
///
/// The outermost container is at depth 1. The scan skips string contents, so it is exact for
/// valid JSON; for invalid JSON its answer does not matter because the parse rejects it anyway.
pub(super) fn first_too_deep(bytes: &[u8], max_depth: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, &byte) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Some(offset);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Nesting depth of `value` (a scalar is 0, `{}` is 1), computed without recursion.
///
/// Stops early once `max_depth` is exceeded, returning `max_depth + 1`.
pub(super) fn depth(value: &Value, max_depth: usize) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((value, level)) = stack.pop() {
        let children: &mut dyn Iterator<Item = &Value> = match value {
            Value::Array(items) => &mut items.iter(),
            Value::Object(map) => &mut map.values(),
            _ => continue,
        };
        deepest = deepest.max(level);
        if deepest > max_depth {
            return deepest;
        }
        stack.extend(
            children
                .filter(|child| child.is_array() || child.is_object())
                .map(|child| (child, level + 1)),
        );
    }
    deepest
}

/// Describes a value for an error message: its kind, and the value itself when it is short.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) if n.is_f64() => format!("the float {n}"),
        Value::Number(n) => format!("the integer {n}"),
        Value::String(s) => format!("the string {}", quote(s)),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// Quotes a user string for an error message, cutting it short if it is long.
pub(super) fn quote(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
    }
}

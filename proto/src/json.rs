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

/// Bounds on a `Struct` received from a client, checked while converting it, before each value is
/// built, so a hostile input costs at most the work its bounds allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Deepest nesting of objects and lists; the `Struct` itself is depth 1.
    pub max_depth: usize,
    /// Most values in all, counting every object, list and scalar (the `Struct` itself included).
    pub max_values: usize,
    /// Longest object key, in bytes.
    pub max_key_bytes: usize,
    /// Most bytes of keys and strings plus one per value: a lower bound of the length of the
    /// value's compact JSON encoding, so a limit on that length can be applied to it.
    pub max_bytes: usize,
}

impl Bounds {
    /// No bounds: for values that passed bounds before, such as those a worker sends back.
    pub const NONE: Bounds = Bounds {
        max_depth: usize::MAX,
        max_values: usize::MAX,
        max_key_bytes: usize::MAX,
        max_bytes: usize::MAX,
    };
}

/// Why a value could not be converted. Paths are dotted (`a.b[3].c`), with long keys cut short.
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
    /// Nested deeper than [`Bounds::max_depth`].
    #[error("{path} is nested deeper than the limit of {limit} levels")]
    TooDeep {
        /// Dotted path of the first value too deep.
        path: String,
        /// The limit.
        limit: usize,
    },
    /// More values than [`Bounds::max_values`].
    #[error("more than the limit of {limit} values (objects, lists and scalars)")]
    TooManyValues {
        /// The limit.
        limit: usize,
    },
    /// A key longer than [`Bounds::max_key_bytes`].
    #[error("key {path} is {len} bytes, limit {limit}")]
    KeyTooLong {
        /// Dotted path of the key, cut short.
        path: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// More bytes than [`Bounds::max_bytes`].
    #[error("larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

/// Longest key quoted verbatim in an error path, in characters.
const MAX_QUOTED_KEY_CHARS: usize = 40;

/// One step of the path to a value.
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// A `Struct` as a JSON object, refusing it as soon as it exceeds `bounds`.
///
/// The work is linear in the size of the input, and bounded by `bounds` before it: the path of a
/// value is kept as a stack of borrowed steps and rendered only for an error.
pub fn struct_to_json(
    value: &Struct,
    bounds: &Bounds,
) -> Result<Map<String, serde_json::Value>, JsonError> {
    let mut converter = Converter {
        bounds,
        path: Vec::new(),
        values: 0,
        bytes: 0,
    };
    converter.count(0)?;
    converter.object(value, 1)
}

struct Converter<'a, 'b> {
    bounds: &'b Bounds,
    /// Where the converter is; at most `max_depth` steps.
    path: Vec<Step<'a>>,
    values: usize,
    bytes: usize,
}

impl<'a> Converter<'a, '_> {
    /// Charges one value carrying `bytes` bytes of text.
    fn count(&mut self, bytes: usize) -> Result<(), JsonError> {
        self.values += 1;
        if self.values.is_multiple_of(4096) {
            // Converting a filter or payload of megabytes on an idle-class thread pauses
            // now and then (`storage::courtesy`).
            storage::courtesy::pause_if_due();
        }
        if self.values > self.bounds.max_values {
            return Err(JsonError::TooManyValues {
                limit: self.bounds.max_values,
            });
        }
        self.bytes = self.bytes.saturating_add(bytes).saturating_add(1);
        if self.bytes > self.bounds.max_bytes {
            return Err(JsonError::TooLarge {
                limit: self.bounds.max_bytes,
            });
        }
        Ok(())
    }

    /// Converts a `Struct` at `depth` (already charged and checked).
    fn object(
        &mut self,
        value: &'a Struct,
        depth: usize,
    ) -> Result<Map<String, serde_json::Value>, JsonError> {
        let mut out = Map::new();
        for (key, field) in &value.fields {
            self.path.push(Step::Key(key));
            if key.len() > self.bounds.max_key_bytes {
                return Err(JsonError::KeyTooLong {
                    path: self.render(),
                    len: key.len(),
                    limit: self.bounds.max_key_bytes,
                });
            }
            self.bytes = self.bytes.saturating_add(key.len());
            let converted = self.value(field, depth)?;
            out.insert(key.clone(), converted);
            self.path.pop();
        }
        Ok(out)
    }

    /// Converts a value found inside a container at `parent_depth`.
    fn value(
        &mut self,
        value: &'a Value,
        parent_depth: usize,
    ) -> Result<serde_json::Value, JsonError> {
        let text = match &value.kind {
            Some(Kind::StringValue(s)) => s.len(),
            _ => 0,
        };
        self.count(text)?;
        let depth = parent_depth + 1;
        let is_container = matches!(value.kind, Some(Kind::StructValue(_) | Kind::ListValue(_)));
        if is_container && depth > self.bounds.max_depth {
            return Err(JsonError::TooDeep {
                path: self.render(),
                limit: self.bounds.max_depth,
            });
        }
        Ok(match &value.kind {
            None => {
                return Err(JsonError::Empty {
                    path: self.render(),
                });
            }
            Some(Kind::NullValue(_)) => serde_json::Value::Null,
            Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
            Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
            Some(Kind::NumberValue(n)) => self.number(*n)?,
            Some(Kind::StructValue(s)) => serde_json::Value::Object(self.object(s, depth)?),
            Some(Kind::ListValue(list)) => {
                // Every element is charged before it is built, so the capacity is within bounds.
                let mut items = Vec::with_capacity(
                    list.values
                        .len()
                        .min(self.bounds.max_values.saturating_sub(self.values)),
                );
                for (i, item) in list.values.iter().enumerate() {
                    self.path.push(Step::Index(i));
                    items.push(self.value(item, depth)?);
                    self.path.pop();
                }
                serde_json::Value::Array(items)
            }
        })
    }

    fn number(&self, n: f64) -> Result<serde_json::Value, JsonError> {
        if !n.is_finite() {
            return Err(JsonError::NonFinite {
                path: self.render(),
            });
        }
        if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INT {
            // Exact: the value is integral and within the range where f64 and i64 agree.
            return Ok(serde_json::Value::Number(Number::from(n as i64)));
        }
        Number::from_f64(n)
            .map(serde_json::Value::Number)
            .ok_or_else(|| JsonError::NonFinite {
                path: self.render(),
            })
    }

    /// The current path as text: only ever built for an error.
    fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for step in &self.path {
            match step {
                Step::Key(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    match key.char_indices().nth(MAX_QUOTED_KEY_CHARS) {
                        None => out.push_str(key),
                        Some((cut, _)) => {
                            out.push_str(&key[..cut]);
                            out.push_str("...");
                        }
                    }
                }
                Step::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        #[cfg(test)]
        tests::note_path(out.len());
        out
    }
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

/// [`map_to_struct`], consuming the map: its strings move rather than being copied, and each
/// list is freed as it is converted, so a large filter or payload is not held twice at once.
pub fn map_into_struct(map: Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_into_value(v)))
            .collect(),
    }
}

fn json_into_value(value: serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        // serde_json numbers are always finite.
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(json_into_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(map_into_struct(map)),
    };
    Value { kind: Some(kind) }
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
    use std::cell::Cell;

    thread_local! {
        /// Bytes of path text this thread has built.
        static PATH_BYTES: Cell<usize> = const { Cell::new(0) };
    }

    pub(super) fn note_path(len: usize) {
        PATH_BYTES.with(|n| n.set(n.get() + len));
    }

    /// A struct of `{long_key: [0, 1, .., n-1]}`: the shape that cost the square of its size.
    fn wide_under_long_key(key_bytes: usize, n: usize) -> Struct {
        let list = (0..n).map(|i| json!(i)).collect::<Vec<_>>();
        json_to_struct(&json!({ "k".repeat(key_bytes): list })).unwrap()
    }

    #[test]
    fn converting_builds_no_path_text_unless_it_fails() {
        // About 1 MiB of list under a 64 KiB key: the old conversion built a 64 KiB path string
        // for each of the 100,000 elements (6.4 GB of text).
        let input = wide_under_long_key(64 << 10, 100_000);
        PATH_BYTES.with(|n| n.set(0));
        let out = struct_to_json(&input, &Bounds::NONE).unwrap();
        assert_eq!(
            out.values().next().unwrap().as_array().unwrap().len(),
            100_000
        );
        assert_eq!(
            PATH_BYTES.with(Cell::get),
            0,
            "path text built for a valid input"
        );
    }

    #[test]
    fn round_trip_keeps_integers_integral() {
        let original = json!({"n": 5, "f": 2.5, "s": "x", "b": true, "z": null,
                              "l": [1, "a", {"k": -3}], "o": {"deep": {"x": 1e300}}});
        let back = struct_to_json(&json_to_struct(&original).unwrap(), &Bounds::NONE).unwrap();
        assert_eq!(serde_json::Value::Object(back), original);
    }

    #[test]
    fn non_finite_and_empty_values_are_refused_with_their_path() {
        let mut s = json_to_struct(&json!({"a": {"b": 1}})).unwrap();
        if let Some(Kind::StructValue(inner)) = &mut s.fields.get_mut("a").unwrap().kind {
            inner.fields.get_mut("b").unwrap().kind = Some(Kind::NumberValue(f64::NAN));
        }
        assert_eq!(
            struct_to_json(&s, &Bounds::NONE).unwrap_err().to_string(),
            "field a.b is not a finite number"
        );
        let empty = Struct {
            fields: [("x".to_owned(), Value { kind: None })].into(),
        };
        assert_eq!(
            struct_to_json(&empty, &Bounds::NONE)
                .unwrap_err()
                .to_string(),
            "field x has no value"
        );
        assert_eq!(
            json_to_struct(&json!([1])).unwrap_err(),
            JsonError::NotAnObject
        );
    }

    #[test]
    fn an_error_renders_its_path_once_and_cuts_long_keys() {
        let mut input = wide_under_long_key(64 << 10, 100_000);
        let list = input.fields.values_mut().next().unwrap();
        let Some(Kind::ListValue(list)) = &mut list.kind else {
            unreachable!()
        };
        list.values[99_999].kind = Some(Kind::NumberValue(f64::INFINITY));
        PATH_BYTES.with(|n| n.set(0));
        let err = struct_to_json(&input, &Bounds::NONE).unwrap_err();
        let expected = format!("field {}...[99999] is not a finite number", "k".repeat(40));
        assert_eq!(err.to_string(), expected);
        assert_eq!(PATH_BYTES.with(Cell::get), "k".repeat(40).len() + 3 + 7);
    }

    const SMALL: Bounds = Bounds {
        max_depth: 3,
        max_values: 10,
        max_key_bytes: 4,
        max_bytes: 40,
    };

    #[test]
    fn bounds_refuse_before_the_excess_is_converted() {
        let ok = json!({"a": {"b": [1, 2]}, "s": "xyz"});
        let back = struct_to_json(&json_to_struct(&ok).unwrap(), &SMALL).unwrap();
        assert_eq!(serde_json::Value::Object(back), ok);

        let refused = |value: serde_json::Value| {
            struct_to_json(&json_to_struct(&value).unwrap(), &SMALL)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused(json!({"a": {"b": [[1]]}})),
            "a.b[0] is nested deeper than the limit of 3 levels"
        );
        assert_eq!(
            refused(json!({"a": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]})),
            "more than the limit of 10 values (objects, lists and scalars)"
        );
        assert_eq!(
            refused(json!({"a": {"long_key": 1}})),
            "key a.long_key is 8 bytes, limit 4"
        );
        assert_eq!(
            refused(json!({"a": "x".repeat(40)})),
            "larger than the limit of 40 bytes"
        );
    }

    #[test]
    fn a_huge_input_is_refused_after_the_work_its_bounds_allow() {
        // 3 MiB of list elements under a long key, refused at the 10th value: the path stack is
        // the only state, and nothing past the limit is looked at.
        let input = wide_under_long_key(1 << 20, 1 << 20);
        PATH_BYTES.with(|n| n.set(0));
        let bounds = Bounds {
            max_key_bytes: 2 << 20,
            max_bytes: usize::MAX,
            ..SMALL
        };
        assert_eq!(
            struct_to_json(&input, &bounds).unwrap_err(),
            JsonError::TooManyValues { limit: 10 }
        );
        assert_eq!(PATH_BYTES.with(Cell::get), 0);
    }
}

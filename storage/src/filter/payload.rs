//! Point payloads: bounded JSON objects, and dotted-path lookup into them.

use std::io;
use std::ops::ControlFlow;

use serde_json::{Map, Value};

use super::json;
use crate::{Error, Result};

/// Bounds applied to payloads received from clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadLimits {
    /// Largest accepted payload, in bytes, both as received and as re-encoded by [`Payload::encode`].
    pub max_bytes: usize,
    /// Deepest accepted nesting of objects and arrays; the payload object itself is depth 1.
    ///
    /// Values above 127 are capped by serde_json's own recursion limit.
    pub max_depth: usize,
}

impl Default for PayloadLimits {
    fn default() -> PayloadLimits {
        PayloadLimits {
            max_bytes: 64 * 1024,
            max_depth: 32,
        }
    }
}

/// A point's payload: a JSON object.
///
/// **Invariant:** a payload built by [`Payload::from_json_bytes`] or [`Payload::from_value`] has
/// passed the [`PayloadLimits`] it was given, and its [`encode`](Payload::encode)d form is at most
/// `max_bytes` long. Payloads are user data, not secrets, so `Debug` shows them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Payload(Map<String, Value>);

impl Payload {
    /// Parses a payload received from a client.
    ///
    /// The size is checked before parsing and the nesting depth on the raw bytes, so hostile input
    /// is rejected before anything is allocated for it. Duplicate keys are an error.
    pub fn from_json_bytes(bytes: &[u8], limits: &PayloadLimits) -> Result<Payload> {
        check_size(bytes.len(), limits)?;
        if let Some(offset) = json::first_too_deep(bytes, limits.max_depth) {
            return Err(too_deep(limits, &format!(" (at byte {offset})")));
        }
        let value = json::parse(bytes).map_err(|reason| Error::InvalidPayload { reason })?;
        let map = into_object(value)?;
        // Re-encoding can be longer than the input (`1e2` becomes `100.0`), and the encoding is
        // what gets stored, so the limit applies to it too.
        check_size(encoded_len(&map)?, limits)?;
        Ok(Payload(map))
    }

    /// Checks an already parsed value (for example one converted from a protobuf `Struct`).
    ///
    /// The size is the length of the value's compact JSON encoding.
    pub fn from_value(value: Value, limits: &PayloadLimits) -> Result<Payload> {
        // Depth first: measuring the size serializes, which recurses, so it must see a bounded value.
        if value.is_object() && json::depth(&value, limits.max_depth) > limits.max_depth {
            return Err(too_deep(limits, ""));
        }
        let map = into_object(value)?;
        check_size(encoded_len(&map)?, limits)?;
        Ok(Payload(map))
    }

    /// Compact JSON encoding, with object keys in sorted order: what the WAL and segments store.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).expect("a map with string keys always serializes")
    }

    /// Bytes the payload holds in memory: every string and key, and the containers and values
    /// around them as `serde_json` lays them out (each map entry counted as its key, its value
    /// and two words of tree node).
    pub fn memory_bytes(&self) -> usize {
        map_memory_bytes(&self.0)
    }

    /// The length of [`Payload::encode`]'s output, without building it.
    pub fn encoded_len(&self) -> usize {
        encoded_len(&self.0).unwrap_or(0)
    }

    /// Decodes a payload written by [`Payload::encode`].
    ///
    /// Stored payloads passed their limits when they were written, so only the shape is checked.
    pub fn decode(bytes: &[u8]) -> Result<Payload> {
        let value = serde_json::from_slice(bytes).map_err(|err| Error::InvalidPayload {
            reason: format!("stored payload is not valid JSON: {err}"),
        })?;
        into_object(value).map(Payload)
    }

    /// Every value found at a dotted path such as `"a.b.c"`.
    ///
    /// Arrays are transparent: when a step reaches an array, the rest of the path is followed into
    /// each element, and arrays found at the end are flattened, so `tags = ["a", "b"]` yields `"a"`
    /// and `"b"`. A missing key yields nothing. Keys that themselves contain `.` cannot be reached.
    pub fn get_path(&self, key: &str) -> Vec<&Value> {
        let segments: Vec<&str> = key.split('.').collect();
        let mut found = Vec::new();
        let _ = self.visit_path(&segments, &mut |value| {
            found.push(value);
            ControlFlow::Continue(())
        });
        found
    }

    /// Calls `f` on every value [`get_path`](Payload::get_path) would return, stopping when it
    /// breaks. Allocation-free, for the filter hot path.
    pub(super) fn visit_path<'a, S: AsRef<str>>(
        &'a self,
        segments: &[S],
        f: &mut dyn FnMut(&'a Value) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        visit_map(&self.0, segments, f)
    }

    /// The payload's top-level object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The payload as a JSON object value.
    pub fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

fn visit_map<'a, S: AsRef<str>>(
    map: &'a Map<String, Value>,
    segments: &[S],
    f: &mut dyn FnMut(&'a Value) -> ControlFlow<()>,
) -> ControlFlow<()> {
    match segments.split_first() {
        Some((first, rest)) => match map.get(first.as_ref()) {
            Some(value) => visit_value(value, rest, f),
            None => ControlFlow::Continue(()),
        },
        None => ControlFlow::Continue(()),
    }
}

fn visit_value<'a, S: AsRef<str>>(
    value: &'a Value,
    segments: &[S],
    f: &mut dyn FnMut(&'a Value) -> ControlFlow<()>,
) -> ControlFlow<()> {
    match value {
        Value::Array(items) => {
            for item in items {
                visit_value(item, segments, f)?;
            }
            ControlFlow::Continue(())
        }
        _ if segments.is_empty() => f(value),
        Value::Object(map) => visit_map(map, segments, f),
        // A scalar with path left over: nothing there.
        _ => ControlFlow::Continue(()),
    }
}

fn into_object(value: Value) -> Result<Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(Error::InvalidPayload {
            reason: format!("expected a JSON object, got {}", json::describe(&other)),
        }),
    }
}

fn check_size(size: usize, limits: &PayloadLimits) -> Result<()> {
    if size > limits.max_bytes {
        return Err(Error::PayloadTooLarge {
            size,
            limit: limits.max_bytes,
        });
    }
    Ok(())
}

fn too_deep(limits: &PayloadLimits, at: &str) -> Error {
    Error::InvalidPayload {
        reason: format!(
            "nested deeper than the limit of {} levels{at}",
            limits.max_depth
        ),
    }
}

/// Length of the compact JSON encoding, computed without building it.
fn map_memory_bytes(map: &Map<String, Value>) -> usize {
    const ENTRY: usize = std::mem::size_of::<String>() + std::mem::size_of::<Value>() + 16;
    std::mem::size_of::<Map<String, Value>>()
        + map
            .iter()
            .map(|(key, value)| ENTRY + key.len() + value_memory_bytes(value))
            .sum::<usize>()
}

/// Heap bytes a value owns beyond its own `size_of::<Value>()`.
fn value_memory_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => {
            items.len() * std::mem::size_of::<Value>()
                + items.iter().map(value_memory_bytes).sum::<usize>()
        }
        Value::Object(map) => map_memory_bytes(map),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

fn encoded_len(map: &Map<String, Value>) -> Result<usize> {
    struct Counter(usize);
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, map).map_err(|err| Error::InvalidPayload {
        reason: err.to_string(),
    })?;
    Ok(counter.0)
}

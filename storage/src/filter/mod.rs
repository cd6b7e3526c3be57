//! Point payloads and search filters.
//!
//! A [`Payload`] is a JSON object attached to a point. A [`Filter`] selects points by their
//! payloads during search, delete-by-filter, scroll and count. Both are parsed from untrusted
//! network input, so parsing is bounded ([`PayloadLimits`], [`FilterLimits`]), checks sizes and
//! nesting before allocating where it can, never panics, and names the offending place, value and
//! limit in its errors ([`Error::InvalidPayload`](crate::Error::InvalidPayload),
//! [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge),
//! [`Error::InvalidFilter`](crate::Error::InvalidFilter)).
//!
//! # Payload paths
//!
//! A condition's `key` is a dotted path such as `"a.b.c"`. Arrays are transparent: a step that
//! reaches an array continues into each element, and arrays at the end are flattened, so with
//! `{"items": [{"price": 1}, {"price": [2, 3]}]}` the key `items.price` finds 1, 2 and 3. A
//! condition on a key passes when *any* value found there passes. Object keys containing `.` cannot
//! be addressed.
//!
//! # Filter grammar
//!
//! ```text
//! filter    = { "must": [condition..]?, "should": [condition..]?, "must_not": [condition..]?,
//!               "min_should": n? }                      every field optional; null = absent
//! condition = { "key": key, "match": match }
//!           | { "key": key, "range": range }
//!           | { "key": key, "is_empty": true | false }
//!           | filter                                    a nested filter
//! match     = { "value": scalar }                       some value equals scalar
//!           | { "any": [scalar..] }                     some value is in the list
//!           | { "except": [scalar..] }                  some string/integer/boolean value is not in it
//! range     = { "gt": num?, "gte": num?, "lt": num?, "lte": num? }   at least one bound; null = absent
//! scalar    = string | integer | true | false           no floats, no null
//! key       = non-empty dot-separated segments, each non-empty
//! ```
//!
//! Unknown fields and duplicate keys are errors at every level, and a condition has exactly one of
//! `match`, `range` and `is_empty`.
//!
//! # Semantics
//!
//! - `must`: every condition matches. `must_not`: none matches. `should`: at least `min_should`
//!   conditions match; `min_should` defaults to 1 when `should` is non-empty and may not exceed its
//!   length. The empty filter `{}` matches every point.
//! - `match` compares strings, integers and booleans exactly and by kind: `{"value": 3}` matches
//!   the JSON integer `3` but not `3.0` or `"3"`. Floats cannot be matched; use `range`.
//! - `range` compares any JSON number, integers and floats mixed, exactly (large integers are not
//!   rounded through `f64`); `-0.0` equals `0`. Bounds combine with *and*; impossible bounds such
//!   as `{"gt": 5, "lt": 1}` are accepted and match nothing. Non-numbers never match.
//! - `is_empty: true` matches when the key has no value other than `null` (missing, `null`, `[]`);
//!   `is_empty: false` is its negation.
//! - A point without a payload is treated as having `{}`: only `is_empty: true` and negations
//!   (conditions under `must_not`) can match it.
//!
//! # Limits
//!
//! [`FilterLimits`] bounds the total number of conditions (each entry of a `must`, `should` or
//! `must_not` list counts, nested filters included), the nesting of filters (the top level is 1),
//! the length of `any`/`except` lists, and the length of keys. String values are bounded only by the
//! size of the request that carried them.

mod condition;
mod json;
mod parse;
mod payload;

#[cfg(test)]
mod tests;

pub use condition::Filter;
pub use json::StrictObject;
pub use payload::{Payload, PayloadLimits};

/// Bounds applied to filters received from clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterLimits {
    /// Most conditions in one filter, counting those of nested filters.
    pub max_conditions: usize,
    /// Deepest nesting of filters; a filter without nested filters has depth 1.
    ///
    /// This also bounds the recursion of parsing and matching, so keep it small.
    pub max_depth: usize,
    /// Most values in one `any` or `except` list.
    pub max_any: usize,
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
}

impl Default for FilterLimits {
    fn default() -> FilterLimits {
        FilterLimits {
            max_conditions: 256,
            max_depth: 8,
            max_any: 1024,
            max_key_bytes: 256,
        }
    }
}

impl FilterLimits {
    /// Deepest JSON nesting a valid filter can have (the filter object is 1), plus one so that the
    /// parser can name a misplaced array or object precisely: each filter level is an object in a
    /// list (2 levels), and the innermost condition adds `{"match": {"any": [..]}}` (3 levels).
    pub fn max_json_depth(&self) -> usize {
        self.max_depth.saturating_mul(2).saturating_add(4)
    }

    /// Most JSON values (objects, arrays and scalars) a valid filter can hold: the top-level object
    /// with its three lists and `min_should`, and per condition at most the largest of a `match`
    /// with a full `any` list (object, key, match object, list and its values), a `range` (object,
    /// key, range object, four bounds) and a nested filter (object, three lists, `min_should`; its
    /// conditions count on their own). Anything larger is refused before it is converted.
    pub fn max_json_values(&self) -> usize {
        let per_condition = self.max_any.saturating_add(4).max(7);
        self.max_conditions
            .saturating_mul(per_condition)
            .saturating_add(5)
    }
}

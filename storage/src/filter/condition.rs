//! The compiled filter and its evaluation against payloads.
//!
//! Parsing (in `parse.rs`) turns the JSON grammar into these types once; [`Filter::matches`] then
//! runs per point during search without allocating: keys are pre-split into segments and `any`
//! lists are sorted for binary search.

use std::cmp::Ordering;
use std::ops::ControlFlow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Number, Value};

use super::json::StrictValue;
use super::{FilterLimits, Payload};
use crate::Result;

/// A search filter: selects points by their payload.
///
/// Built only by parsing ([`Filter::from_json_bytes`], [`Filter::from_value`] or `Deserialize`),
/// so every `Filter` has passed validation against some [`FilterLimits`]. `Deserialize` applies
/// [`FilterLimits::default()`]; use [`Filter::from_value`] for other limits. `Serialize` writes the
/// canonical form of the grammar: empty lists are omitted and `any`/`except` lists are sorted
/// (strings, then integers, then booleans).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub(super) must: Vec<Condition>,
    pub(super) should: Vec<Condition>,
    pub(super) must_not: Vec<Condition>,
    /// How many `should` conditions must match; `None` means one, if there are any.
    /// **Invariant:** at most `should.len()`.
    pub(super) min_should: Option<usize>,
}

/// One entry of a `must`, `should` or `must_not` list.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Condition {
    /// A test on the values found at a key.
    Field { key: Key, test: FieldTest },
    /// A nested filter.
    Filter(Box<Filter>),
}

/// A dotted payload path, split once at parse time.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Key {
    pub(super) raw: Box<str>,
    pub(super) segments: Box<[Box<str>]>,
}

impl Key {
    pub(super) fn new(raw: &str) -> Key {
        Key {
            raw: raw.into(),
            segments: raw.split('.').map(Box::from).collect(),
        }
    }
}

/// What a field condition checks about each value at its key.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum FieldTest {
    /// Some value equals this scalar.
    Value(Scalar),
    /// Some value is one of these.
    Any(ScalarSet),
    /// Some value is a string, integer or boolean that is none of these.
    Except(ScalarSet),
    /// Some value is a number within the bounds.
    Range(Range),
    /// `true`: the key has no non-null value; `false`: it has at least one.
    IsEmpty(bool),
}

/// A value `match` can compare with. Floats are deliberately absent: use `range`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar {
    Str(Box<str>),
    /// Any JSON integer: an `i64` or a `u64`.
    Int(i128),
    Bool(bool),
}

impl Scalar {
    /// The scalar `value` holds, if it is a string, an integer or a boolean.
    fn of(value: &Value) -> Option<ScalarRef<'_>> {
        match value {
            Value::String(s) => Some(ScalarRef::Str(s)),
            Value::Number(n) => json_int(n).map(ScalarRef::Int),
            Value::Bool(b) => Some(ScalarRef::Bool(*b)),
            _ => None,
        }
    }

    fn equals(&self, value: &Value) -> bool {
        match (self, Scalar::of(value)) {
            (Scalar::Str(a), Some(ScalarRef::Str(b))) => **a == *b,
            (Scalar::Int(a), Some(ScalarRef::Int(b))) => *a == b,
            (Scalar::Bool(a), Some(ScalarRef::Bool(b))) => *a == b,
            _ => false,
        }
    }

    pub(super) fn to_value(&self) -> Value {
        match self {
            Scalar::Str(s) => Value::String(s.to_string()),
            Scalar::Int(i) => int_value(*i),
            Scalar::Bool(b) => Value::Bool(*b),
        }
    }
}

enum ScalarRef<'a> {
    Str(&'a str),
    Int(i128),
    Bool(bool),
}

/// The scalars of an `any` or `except` list, grouped by kind and sorted for binary search.
///
/// Duplicates are kept, so the list's length (which the limits bound) survives a round trip.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct ScalarSet {
    pub(super) strs: Box<[Box<str>]>,
    pub(super) ints: Box<[i128]>,
    pub(super) bools: Box<[bool]>,
}

impl ScalarSet {
    pub(super) fn new(scalars: Vec<Scalar>) -> ScalarSet {
        let (mut strs, mut ints, mut bools) = (Vec::new(), Vec::new(), Vec::new());
        for scalar in scalars {
            match scalar {
                Scalar::Str(s) => strs.push(s),
                Scalar::Int(i) => ints.push(i),
                Scalar::Bool(b) => bools.push(b),
            }
        }
        strs.sort_unstable();
        ints.sort_unstable();
        bools.sort_unstable();
        ScalarSet {
            strs: strs.into(),
            ints: ints.into(),
            bools: bools.into(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.strs.len() + self.ints.len() + self.bools.len()
    }

    /// Whether the set holds `value`, or `None` if `value` is not a string, integer or boolean.
    fn contains(&self, value: &Value) -> Option<bool> {
        Some(match Scalar::of(value)? {
            ScalarRef::Str(s) => self.strs.binary_search_by(|x| (**x).cmp(s)).is_ok(),
            ScalarRef::Int(i) => self.ints.binary_search(&i).is_ok(),
            ScalarRef::Bool(b) => self.bools.binary_search(&b).is_ok(),
        })
    }

    fn to_value(&self) -> Value {
        let strs = self.strs.iter().map(|s| Value::String(s.to_string()));
        let ints = self.ints.iter().map(|&i| int_value(i));
        let bools = self.bools.iter().map(|&b| Value::Bool(b));
        Value::Array(strs.chain(ints).chain(bools).collect())
    }
}

/// Numeric bounds; at least one is present.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Range {
    pub(super) gt: Option<Num>,
    pub(super) gte: Option<Num>,
    pub(super) lt: Option<Num>,
    pub(super) lte: Option<Num>,
}

impl Range {
    fn contains(&self, value: &Value) -> bool {
        let Value::Number(n) = value else {
            return false;
        };
        let Some(x) = Num::of(n) else {
            return false;
        };
        let above =
            |bound: &Option<Num>, ok: fn(Ordering) -> bool| bound.is_none_or(|b| ok(x.cmp(b)));
        above(&self.gt, Ordering::is_gt)
            && above(&self.gte, Ordering::is_ge)
            && above(&self.lt, Ordering::is_lt)
            && above(&self.lte, Ordering::is_le)
    }

    pub(super) fn bounds(&self) -> [(&'static str, Option<Num>); 4] {
        [
            ("gt", self.gt),
            ("gte", self.gte),
            ("lt", self.lt),
            ("lte", self.lte),
        ]
    }
}

/// A finite JSON number, kept exact: integers are not rounded through `f64`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    /// The number, or `None` if it is not finite (impossible for serde_json numbers today).
    pub(super) fn of(n: &Number) -> Option<Num> {
        match json_int(n) {
            Some(i) => Some(Num::Int(i)),
            None => n.as_f64().filter(|f| f.is_finite()).map(Num::Float),
        }
    }

    /// Exact numeric order between two finite numbers, integers and floats mixed.
    fn cmp(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (Num::Int(a), Num::Float(b)) => cmp_int_float(a, b),
            (Num::Float(a), Num::Int(b)) => cmp_int_float(b, a).reverse(),
            (Num::Float(a), Num::Float(b)) => cmp_floats(a, b),
        }
    }

    fn to_value(self) -> Value {
        match self {
            Num::Int(i) => int_value(i),
            Num::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        }
    }
}

fn cmp_floats(a: f64, b: f64) -> Ordering {
    // Not `total_cmp`: -0.0 and 0.0 must compare equal.
    if a < b {
        Ordering::Less
    } else if a > b {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

/// Compares an integer in the JSON range (`i64` or `u64`) with a finite float, exactly.
fn cmp_int_float(int: i128, float: f64) -> Ordering {
    // 2^64 bounds every JSON integer, and below it `trunc` converts to i128 exactly.
    const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
    if float >= TWO_POW_64 {
        return Ordering::Less;
    }
    if float <= -TWO_POW_64 {
        return Ordering::Greater;
    }
    let whole = float.trunc();
    // Exact: `whole` is an integer of magnitude below 2^64.
    let whole_int = whole as i128;
    int.cmp(&whole_int)
        .then_with(|| cmp_floats(0.0, float - whole))
}

/// The integer a JSON number holds, if it is one (`3` is, `3.0` is not).
fn json_int(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

fn int_value(i: i128) -> Value {
    if let Ok(i) = i64::try_from(i) {
        Value::from(i)
    } else if let Ok(u) = u64::try_from(i) {
        Value::from(u)
    } else {
        // Parsing only produces integers in the JSON range.
        Value::Null
    }
}

impl Filter {
    /// Whether the point with this payload (or with none) passes the filter.
    ///
    /// A point without a payload is treated as having an empty one: field conditions find no
    /// values there, so only `is_empty: true` and negations (`must_not`) can match it.
    pub fn matches(&self, payload: Option<&Payload>) -> bool {
        self.must.iter().all(|c| c.matches(payload))
            && !self.must_not.iter().any(|c| c.matches(payload))
            && self.should_matches(payload)
    }

    /// True for the empty filter, which matches every point.
    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.should.is_empty() && self.must_not.is_empty()
    }

    fn should_matches(&self, payload: Option<&Payload>) -> bool {
        let needed = match self.min_should {
            Some(n) => n,
            None if self.should.is_empty() => 0,
            None => 1,
        };
        if needed == 0 {
            return true;
        }
        let mut n_matched = 0;
        self.should.iter().any(|c| {
            n_matched += usize::from(c.matches(payload));
            n_matched >= needed
        })
    }

    /// The filter in the canonical form of the JSON grammar.
    pub(super) fn to_value(&self) -> Value {
        let mut obj = Map::new();
        for (name, list) in [
            ("must", &self.must),
            ("should", &self.should),
            ("must_not", &self.must_not),
        ] {
            if !list.is_empty() {
                obj.insert(
                    name.to_owned(),
                    Value::Array(list.iter().map(Condition::to_value).collect()),
                );
            }
        }
        if let Some(n) = self.min_should {
            obj.insert("min_should".to_owned(), Value::from(n));
        }
        Value::Object(obj)
    }
}

impl Condition {
    fn matches(&self, payload: Option<&Payload>) -> bool {
        match self {
            Condition::Filter(filter) => filter.matches(payload),
            Condition::Field { key, test } => {
                let Some(payload) = payload else {
                    return matches!(test, FieldTest::IsEmpty(true));
                };
                test.matches(payload, key)
            }
        }
    }

    fn to_value(&self) -> Value {
        match self {
            Condition::Filter(filter) => filter.to_value(),
            Condition::Field { key, test } => {
                let mut obj = Map::new();
                obj.insert("key".to_owned(), Value::String(key.raw.to_string()));
                let (name, value) = match test {
                    FieldTest::Value(s) => ("match", single("value", s.to_value())),
                    FieldTest::Any(set) => ("match", single("any", set.to_value())),
                    FieldTest::Except(set) => ("match", single("except", set.to_value())),
                    FieldTest::Range(range) => {
                        let mut bounds = Map::new();
                        for (name, bound) in range.bounds() {
                            if let Some(bound) = bound {
                                bounds.insert(name.to_owned(), bound.to_value());
                            }
                        }
                        ("range", Value::Object(bounds))
                    }
                    FieldTest::IsEmpty(b) => ("is_empty", Value::Bool(*b)),
                };
                obj.insert(name.to_owned(), value);
                Value::Object(obj)
            }
        }
    }
}

impl FieldTest {
    fn matches(&self, payload: &Payload, key: &Key) -> bool {
        // True as soon as some value at the key passes `test`.
        let any_value = |test: &dyn Fn(&Value) -> bool| {
            payload
                .visit_path(&key.segments, &mut |value| {
                    if test(value) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .is_break()
        };
        match self {
            FieldTest::Value(scalar) => any_value(&|v| scalar.equals(v)),
            FieldTest::Any(set) => any_value(&|v| set.contains(v) == Some(true)),
            FieldTest::Except(set) => any_value(&|v| set.contains(v) == Some(false)),
            FieldTest::Range(range) => any_value(&|v| range.contains(v)),
            FieldTest::IsEmpty(empty) => *empty != any_value(&|v| !v.is_null()),
        }
    }
}

fn single(name: &str, value: Value) -> Value {
    let mut obj = Map::new();
    obj.insert(name.to_owned(), value);
    Value::Object(obj)
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Filter, D::Error> {
        let StrictValue(value) = StrictValue::deserialize(deserializer)?;
        let parsed: Result<Filter> = Filter::from_value(value, &FilterLimits::default());
        parsed.map_err(serde::de::Error::custom)
    }
}

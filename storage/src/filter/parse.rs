//! From the JSON grammar to a compiled [`Filter`], and the limit checks.
//!
//! The parser walks a `serde_json::Value` by hand rather than deriving `Deserialize`: every error
//! then names the exact place (`must[2].range`), and limits are enforced before the parts they
//! bound are built. Unknown fields are errors everywhere, so typos never silently widen a filter.
//!
//! Limit checks live in [`Budget`], shared by the parser and by [`Filter::validate`]; both walk in
//! the same order (`must`, `should`, `must_not`, each list before its elements), so they report
//! the same first violation with the same message.

use serde_json::{Map, Value};

use super::condition::{Condition, FieldTest, Key, Num, Range, Scalar, ScalarSet};
use super::json::{self, describe, quote};
use super::{Filter, FilterLimits};
use crate::{Error, Result};

const FILTER_FIELDS: [&str; 4] = ["must", "should", "must_not", "min_should"];
const FIELD_FIELDS: [&str; 4] = ["key", "match", "range", "is_empty"];
const TESTS: [&str; 3] = ["match", "range", "is_empty"];
const MATCH_FIELDS: [&str; 3] = ["value", "any", "except"];
const RANGE_FIELDS: [&str; 4] = ["gt", "gte", "lt", "lte"];

impl Filter {
    /// Parses and validates a filter received from a client.
    ///
    /// Nesting is checked on the raw bytes before parsing, and duplicate keys are an error.
    pub fn from_json_bytes(bytes: &[u8], limits: &FilterLimits) -> Result<Filter> {
        let max_json_depth = limits.max_json_depth();
        if let Some(offset) = json::first_too_deep(bytes, max_json_depth) {
            return Err(invalid(format!(
                "JSON nested too deeply at byte {offset}: filters nest at most {} levels",
                limits.max_depth
            )));
        }
        let value = json::parse(bytes).map_err(invalid)?;
        Filter::from_value(value, limits)
    }

    /// Parses and validates an already parsed value (for example one converted from protobuf).
    pub fn from_value(value: Value, limits: &FilterLimits) -> Result<Filter> {
        let Value::Object(obj) = &value else {
            return Err(invalid(format!(
                "expected a JSON object, got {}",
                describe(&value)
            )));
        };
        let mut parser = Parser {
            budget: Budget::new(limits),
            path: String::new(),
        };
        parser.filter(obj, 1)
    }

    /// Checks the filter against `limits`, which may be tighter than those it was parsed with.
    pub fn validate(&self, limits: &FilterLimits) -> Result<()> {
        let mut validator = Validator {
            budget: Budget::new(limits),
            path: String::new(),
        };
        validator.filter(self, 1)
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidFilter { reason }
}

/// The limits, and how much of them the filter has used so far.
struct Budget<'a> {
    limits: &'a FilterLimits,
    n_conditions: usize,
}

impl<'a> Budget<'a> {
    fn new(limits: &'a FilterLimits) -> Budget<'a> {
        Budget {
            limits,
            n_conditions: 0,
        }
    }

    /// Charges a list of `n` conditions at `path`.
    fn conditions(&mut self, path: &str, n: usize) -> Result<()> {
        self.n_conditions = self.n_conditions.saturating_add(n);
        let limit = self.limits.max_conditions;
        if self.n_conditions > limit {
            return Err(invalid(format!(
                "too many conditions: {path} brings the total to {}, limit {limit} counting nested filters",
                self.n_conditions
            )));
        }
        Ok(())
    }

    /// Checks a nested filter at `path` that is `depth` levels deep (the top level is 1).
    fn depth(&self, path: &str, depth: usize) -> Result<()> {
        let limit = self.limits.max_depth;
        if depth > limit {
            return Err(invalid(format!(
                "{path}: filter nested {depth} levels deep, limit {limit}"
            )));
        }
        Ok(())
    }

    /// Checks the key of the condition at `path`.
    fn key(&self, path: &str, key: &str) -> Result<()> {
        let limit = self.limits.max_key_bytes;
        if key.is_empty() {
            return Err(invalid(format!("{path}.key: must not be empty")));
        }
        if key.len() > limit {
            return Err(invalid(format!(
                "{path}.key is {} bytes, limit {limit}",
                key.len()
            )));
        }
        if key.split('.').any(str::is_empty) {
            return Err(invalid(format!(
                "{path}.key: {} has an empty segment",
                quote(key)
            )));
        }
        Ok(())
    }

    /// Checks the length of an `any` or `except` list at `path`.
    fn list_len(&self, path: &str, n: usize) -> Result<()> {
        let limit = self.limits.max_any;
        if n == 0 {
            return Err(invalid(format!("{path}: must not be empty")));
        }
        if n > limit {
            return Err(invalid(format!("{path} has {n} values, limit {limit}")));
        }
        Ok(())
    }
}

/// Appends `.name` (or `name` at the root) to `path`.
fn push_field(path: &mut String, name: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(name);
}

fn push_index(path: &mut String, idx: usize) {
    use std::fmt::Write;
    let _ = write!(path, "[{idx}]");
}

/// `path: msg`, or just `msg` at the root.
fn at(path: &str, msg: impl std::fmt::Display) -> Error {
    if path.is_empty() {
        invalid(msg.to_string())
    } else {
        invalid(format!("{path}: {msg}"))
    }
}

fn check_fields(path: &str, obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<()> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(at(
            path,
            format_args!("unknown field {}, expected {what}", quote(unknown)),
        )),
        None => Ok(()),
    }
}

fn one_of(names: &[&str]) -> String {
    format!("one of {}", names.join(", "))
}

/// `None` for an absent field or an explicit `null`.
fn field<'v>(obj: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    obj.get(name).filter(|v| !v.is_null())
}

struct Parser<'a> {
    budget: Budget<'a>,
    /// Where the parser is, as in `must[2].range`; restored after each step.
    path: String,
}

impl Parser<'_> {
    /// Parses a filter object at `depth` (already checked against the limit).
    fn filter(&mut self, obj: &Map<String, Value>, depth: usize) -> Result<Filter> {
        check_fields(&self.path, obj, &FILTER_FIELDS, &one_of(&FILTER_FIELDS))?;
        let must = self.list(obj, "must", depth)?;
        let should = self.list(obj, "should", depth)?;
        let must_not = self.list(obj, "must_not", depth)?;
        let min_should = match field(obj, "min_should") {
            None => None,
            Some(value) => {
                let mark = self.path.len();
                push_field(&mut self.path, "min_should");
                let Some(n) = value.as_u64() else {
                    return Err(at(
                        &self.path,
                        format_args!("expected a non-negative integer, got {}", describe(value)),
                    ));
                };
                if n > should.len() as u64 {
                    return Err(invalid(format!(
                        "{} is {n} but should has {} conditions",
                        self.path,
                        should.len()
                    )));
                }
                self.path.truncate(mark);
                usize::try_from(n).ok()
            }
        };
        Ok(Filter {
            must,
            should,
            must_not,
            min_should,
        })
    }

    fn list(
        &mut self,
        obj: &Map<String, Value>,
        name: &str,
        depth: usize,
    ) -> Result<Vec<Condition>> {
        let Some(value) = field(obj, name) else {
            return Ok(Vec::new());
        };
        let mark = self.path.len();
        push_field(&mut self.path, name);
        let Value::Array(items) = value else {
            return Err(at(
                &self.path,
                format_args!("expected an array of conditions, got {}", describe(value)),
            ));
        };
        self.budget.conditions(&self.path, items.len())?;
        let list_mark = self.path.len();
        let mut conditions = Vec::with_capacity(items.len());
        for (idx, item) in items.iter().enumerate() {
            // A filter of hundreds of long lists, parsed on an idle-class thread, pauses now
            // and then (`courtesy`).
            crate::courtesy::pause_if_due();
            push_index(&mut self.path, idx);
            conditions.push(self.condition(item, depth)?);
            self.path.truncate(list_mark);
        }
        self.path.truncate(mark);
        Ok(conditions)
    }

    /// Parses one condition inside a filter at `depth`.
    fn condition(&mut self, value: &Value, depth: usize) -> Result<Condition> {
        let Value::Object(obj) = value else {
            return Err(at(
                &self.path,
                format_args!("expected a condition object, got {}", describe(value)),
            ));
        };
        let is_field = FIELD_FIELDS.iter().any(|name| obj.contains_key(*name));
        if !is_field {
            check_fields(
                &self.path,
                obj,
                &FILTER_FIELDS,
                "a field condition (key with one of match, range, is_empty) \
                 or a nested filter (must, should, must_not, min_should)",
            )?;
            self.budget.depth(&self.path, depth + 1)?;
            return Ok(Condition::Filter(Box::new(self.filter(obj, depth + 1)?)));
        }
        check_fields(&self.path, obj, &FIELD_FIELDS, &one_of(&FIELD_FIELDS))?;
        let tests: Vec<&str> = TESTS
            .into_iter()
            .filter(|name| obj.contains_key(*name))
            .collect();
        let key = match obj.get("key") {
            Some(Value::String(key)) => key,
            Some(other) => {
                return Err(invalid(format!(
                    "{}.key: expected a string, got {}",
                    self.path,
                    describe(other)
                )));
            }
            None => {
                return Err(at(
                    &self.path,
                    format_args!("key is required with {}", tests.join(" and ")),
                ));
            }
        };
        self.budget.key(&self.path, key)?;
        let test = match tests.as_slice() {
            [name] => *name,
            [] => {
                return Err(at(
                    &self.path,
                    format_args!("a condition on key {} needs {}", quote(key), one_of(&TESTS)),
                ));
            }
            [first, second, ..] => {
                return Err(at(
                    &self.path,
                    format_args!("has both {first} and {second}, expected {}", one_of(&TESTS)),
                ));
            }
        };
        let mark = self.path.len();
        push_field(&mut self.path, test);
        let value = &obj[test];
        let test = match test {
            "match" => self.match_test(value)?,
            "range" => FieldTest::Range(self.range(value)?),
            _ => match value {
                Value::Bool(b) => FieldTest::IsEmpty(*b),
                other => {
                    return Err(at(
                        &self.path,
                        format_args!("expected true or false, got {}", describe(other)),
                    ));
                }
            },
        };
        self.path.truncate(mark);
        Ok(Condition::Field {
            key: Key::new(key),
            test,
        })
    }

    fn match_test(&mut self, value: &Value) -> Result<FieldTest> {
        let Value::Object(obj) = value else {
            return Err(at(
                &self.path,
                format_args!(
                    "expected an object with {}, got {}",
                    one_of(&MATCH_FIELDS),
                    describe(value)
                ),
            ));
        };
        check_fields(&self.path, obj, &MATCH_FIELDS, &one_of(&MATCH_FIELDS))?;
        let present: Vec<&str> = MATCH_FIELDS
            .into_iter()
            .filter(|name| obj.contains_key(*name))
            .collect();
        let name = match present.as_slice() {
            [name] => *name,
            [] => {
                return Err(at(
                    &self.path,
                    format_args!("expected {}", one_of(&MATCH_FIELDS)),
                ));
            }
            [first, second, ..] => {
                return Err(at(
                    &self.path,
                    format_args!(
                        "has both {first} and {second}, expected {}",
                        one_of(&MATCH_FIELDS)
                    ),
                ));
            }
        };
        let mark = self.path.len();
        push_field(&mut self.path, name);
        let value = &obj[name];
        let test = if name == "value" {
            FieldTest::Value(self.scalar(value)?)
        } else {
            let Value::Array(items) = value else {
                return Err(at(
                    &self.path,
                    format_args!(
                        "expected an array of strings, integers or booleans, got {}",
                        describe(value)
                    ),
                ));
            };
            // Checked before the scalars are built.
            self.budget.list_len(&self.path, items.len())?;
            let list_mark = self.path.len();
            let mut scalars = Vec::with_capacity(items.len());
            for (idx, item) in items.iter().enumerate() {
                push_index(&mut self.path, idx);
                scalars.push(self.scalar(item)?);
                self.path.truncate(list_mark);
            }
            let set = ScalarSet::new(scalars);
            if name == "any" {
                FieldTest::Any(set)
            } else {
                FieldTest::Except(set)
            }
        };
        self.path.truncate(mark);
        Ok(test)
    }

    fn scalar(&self, value: &Value) -> Result<Scalar> {
        let scalar = match value {
            Value::String(s) => Some(Scalar::Str(s.as_str().into())),
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            Value::Number(n) => match Num::of(n) {
                Some(Num::Int(i)) => Some(Scalar::Int(i)),
                _ => None,
            },
            _ => None,
        };
        scalar.ok_or_else(|| {
            let hint = if value.is_number() {
                "; use range for floats"
            } else {
                ""
            };
            at(
                &self.path,
                format_args!(
                    "expected a string, integer or boolean, got {}{hint}",
                    describe(value)
                ),
            )
        })
    }

    fn range(&mut self, value: &Value) -> Result<Range> {
        let Value::Object(obj) = value else {
            return Err(at(
                &self.path,
                format_args!(
                    "expected an object with {}, got {}",
                    one_of(&RANGE_FIELDS),
                    describe(value)
                ),
            ));
        };
        check_fields(&self.path, obj, &RANGE_FIELDS, &one_of(&RANGE_FIELDS))?;
        let bound = |name: &str| -> Result<Option<Num>> {
            let Some(value) = field(obj, name) else {
                return Ok(None);
            };
            let num = match value {
                Value::Number(n) => Num::of(n),
                _ => None,
            };
            match num {
                Some(num) => Ok(Some(num)),
                None => Err(invalid(format!(
                    "{}.{name}: expected a finite number, got {}",
                    self.path,
                    describe(value)
                ))),
            }
        };
        let range = Range {
            gt: bound("gt")?,
            gte: bound("gte")?,
            lt: bound("lt")?,
            lte: bound("lte")?,
        };
        if range.bounds().iter().all(|(_, b)| b.is_none()) {
            return Err(at(
                &self.path,
                "at least one of gt, gte, lt, lte is required",
            ));
        }
        Ok(range)
    }
}

/// Re-checks a compiled filter's limits, walking in the parser's order.
struct Validator<'a> {
    budget: Budget<'a>,
    path: String,
}

impl Validator<'_> {
    fn filter(&mut self, filter: &Filter, depth: usize) -> Result<()> {
        for (name, list) in [
            ("must", &filter.must),
            ("should", &filter.should),
            ("must_not", &filter.must_not),
        ] {
            if list.is_empty() {
                continue;
            }
            let mark = self.path.len();
            push_field(&mut self.path, name);
            self.budget.conditions(&self.path, list.len())?;
            let list_mark = self.path.len();
            for (idx, condition) in list.iter().enumerate() {
                push_index(&mut self.path, idx);
                self.condition(condition, depth)?;
                self.path.truncate(list_mark);
            }
            self.path.truncate(mark);
        }
        Ok(())
    }

    fn condition(&mut self, condition: &Condition, depth: usize) -> Result<()> {
        match condition {
            Condition::Filter(filter) => {
                self.budget.depth(&self.path, depth + 1)?;
                self.filter(filter, depth + 1)
            }
            Condition::Field { key, test } => {
                self.budget.key(&self.path, &key.raw)?;
                let (name, set) = match test {
                    FieldTest::Any(set) => ("any", set),
                    FieldTest::Except(set) => ("except", set),
                    _ => return Ok(()),
                };
                let mark = self.path.len();
                push_field(&mut self.path, "match");
                push_field(&mut self.path, name);
                self.budget.list_len(&self.path, set.len())?;
                self.path.truncate(mark);
                Ok(())
            }
        }
    }
}

//! Property tests of payloads and filters against a small reference evaluator.

use super::*;

// Property tests. The reference evaluator below reads the JSON grammar directly and is written
// independently of the compiled form, with plain f64 comparisons (exact for the small numbers
// generated here).

const PAYLOAD_KEYS: [&str; 3] = ["a", "b", "c"];
const FILTER_KEYS: [&str; 6] = ["a", "b", "c", "a.b", "a.c", "b.a.c"];

fn arb_scalar() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        prop::sample::select(vec!["x", "y", "z"]).prop_map(Value::from),
        (-3i64..4).prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ]
}

fn arb_payload_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        arb_scalar(),
        prop::sample::select(vec![-1.5, 0.0, -0.0, 2.0, 2.5]).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(PAYLOAD_KEYS.to_vec()), inner, 0..3)
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
        ]
    })
}

fn arb_payload() -> impl Strategy<Value = Option<Map<String, Value>>> {
    prop::option::weighted(
        0.9,
        prop::collection::btree_map(
            prop::sample::select(PAYLOAD_KEYS.to_vec()),
            arb_payload_value(),
            0..4,
        )
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
    )
}

fn arb_field_condition() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(FILTER_KEYS.to_vec());
    let list = prop::collection::vec(arb_scalar(), 1..4);
    let bound = prop::option::of(prop_oneof![
        (-3i64..4).prop_map(Value::from),
        prop::sample::select(vec![-1.5, 0.0, 2.0, 2.5]).prop_map(Value::from),
    ]);
    let bounds = (bound.clone(), bound.clone(), bound.clone(), bound)
        .prop_filter("a range needs a bound", |b| {
            b.0.is_some() || b.1.is_some() || b.2.is_some() || b.3.is_some()
        })
        .prop_map(|(gt, gte, lt, lte)| {
            let mut range = Map::new();
            for (name, bound) in [("gt", gt), ("gte", gte), ("lt", lt), ("lte", lte)] {
                if let Some(bound) = bound {
                    range.insert(name.to_owned(), bound);
                }
            }
            Value::Object(range)
        });
    let test = prop_oneof![
        arb_scalar().prop_map(|v| json!({"match": {"value": v}})),
        list.clone().prop_map(|v| json!({"match": {"any": v}})),
        list.prop_map(|v| json!({"match": {"except": v}})),
        bounds.prop_map(|r| json!({"range": r})),
        any::<bool>().prop_map(|b| json!({"is_empty": b})),
    ];
    (key, test).prop_map(|(key, mut test)| {
        test["key"] = Value::from(key);
        test
    })
}

fn filter_object(conditions: impl Strategy<Value = Value> + Clone) -> impl Strategy<Value = Value> {
    let list = prop::collection::vec(conditions, 0..3);
    (
        list.clone(),
        list.clone(),
        list,
        prop::option::of(0usize..3),
    )
        .prop_map(|(must, should, must_not, min_should)| {
            let mut obj = Map::new();
            obj.insert("must".to_owned(), Value::Array(must));
            obj.insert("must_not".to_owned(), Value::Array(must_not));
            if let Some(n) = min_should {
                obj.insert("min_should".to_owned(), Value::from(n.min(should.len())));
            }
            obj.insert("should".to_owned(), Value::Array(should));
            Value::Object(obj)
        })
}

fn arb_filter() -> impl Strategy<Value = Value> {
    let condition = arb_field_condition().prop_recursive(3, 24, 3, filter_object);
    filter_object(condition)
}

fn ref_values<'a>(value: &'a Value, segments: &[&str], out: &mut Vec<&'a Value>) {
    if let Value::Array(items) = value {
        for item in items {
            ref_values(item, segments, out);
        }
    } else if segments.is_empty() {
        out.push(value);
    } else if let Some(next) = value.get(segments[0]) {
        ref_values(next, &segments[1..], out);
    }
}

fn ref_same_scalar(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => !x.is_f64() && !y.is_f64() && x == y,
        (Value::String(_), Value::String(_)) | (Value::Bool(_), Value::Bool(_)) => a == b,
        _ => false,
    }
}

fn ref_matches(filter: &Value, payload: Option<&Map<String, Value>>) -> bool {
    let list = |name: &str| filter[name].as_array().cloned().unwrap_or_default();
    let should = list("should");
    let needed = match filter["min_should"].as_u64() {
        Some(n) => n as usize,
        None => usize::from(!should.is_empty()),
    };
    list("must").iter().all(|c| ref_condition(c, payload))
        && !list("must_not").iter().any(|c| ref_condition(c, payload))
        && should.iter().filter(|c| ref_condition(c, payload)).count() >= needed
}

fn ref_condition(condition: &Value, payload: Option<&Map<String, Value>>) -> bool {
    let Some(key) = condition["key"].as_str() else {
        return ref_matches(condition, payload);
    };
    let segments: Vec<&str> = key.split('.').collect();
    let mut values = Vec::new();
    if let Some(first) = payload.and_then(|map| map.get(segments[0])) {
        ref_values(first, &segments[1..], &mut values);
    }
    let is_scalar = |v: &Value| v.is_string() || v.is_boolean() || v.is_i64() || v.is_u64();
    let in_list = |list: &Value, v: &Value| {
        list.as_array()
            .unwrap()
            .iter()
            .any(|s| ref_same_scalar(s, v))
    };
    let m = &condition["match"];
    if !m["value"].is_null() {
        values.iter().any(|v| ref_same_scalar(&m["value"], v))
    } else if !m["any"].is_null() {
        values.iter().any(|v| in_list(&m["any"], v))
    } else if !m["except"].is_null() {
        values
            .iter()
            .any(|v| is_scalar(v) && !in_list(&m["except"], v))
    } else if let Some(range) = condition["range"].as_object() {
        values.iter().any(|v| {
            let Some(x) = v.as_f64() else {
                return false;
            };
            let bound = |name: &str| range.get(name).and_then(Value::as_f64);
            bound("gt").is_none_or(|b| x > b)
                && bound("gte").is_none_or(|b| x >= b)
                && bound("lt").is_none_or(|b| x < b)
                && bound("lte").is_none_or(|b| x <= b)
        })
    } else {
        let empty = condition["is_empty"].as_bool().unwrap();
        empty == values.iter().all(|v| v.is_null())
    }
}

/// JSON-looking text, to reach deeper into the parsers than random bytes do.
fn arb_json_ish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\\",
            " ",
            "0",
            "-1",
            "2.5",
            "1e999",
            "null",
            "true",
            "\"must\"",
            "\"should\"",
            "\"must_not\"",
            "\"key\"",
            "\"a.b\"",
            "\"match\"",
            "\"value\"",
            "\"any\"",
            "\"except\"",
            "\"range\"",
            "\"gt\"",
            "\"is_empty\"",
            "\"min_should\"",
            "\"\"",
        ]),
        0..64,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matches_agrees_with_reference(filter_json in arb_filter(), payloads in prop::collection::vec(arb_payload(), 1..8)) {
        let filter = Filter::from_value(filter_json.clone(), &FilterLimits::default()).unwrap();
        for map in payloads {
            let payload = map.clone().map(|m| Payload::from_value(Value::Object(m), &PayloadLimits::default()).unwrap());
            prop_assert_eq!(
                filter.matches(payload.as_ref()),
                ref_matches(&filter_json, map.as_ref()),
                "payload {:?}", map
            );
        }
    }

    #[test]
    fn filter_round_trips(filter_json in arb_filter()) {
        let filter = Filter::from_value(filter_json, &FilterLimits::default()).unwrap();
        let bytes = serde_json::to_vec(&filter).unwrap();
        let back = Filter::from_json_bytes(&bytes, &FilterLimits::default()).unwrap();
        prop_assert_eq!(&back, &filter);
        prop_assert_eq!(serde_json::to_vec(&back).unwrap(), bytes);
    }

    #[test]
    fn validate_agrees_with_parse(
        filter_json in arb_filter(),
        max_conditions in 0usize..12,
        max_depth in 1usize..4,
        max_any in 1usize..4,
        max_key_bytes in 1usize..6,
    ) {
        let limits = FilterLimits { max_conditions, max_depth, max_any, max_key_bytes };
        let by_parse = Filter::from_value(filter_json.clone(), &limits).map(drop);
        let by_validate = Filter::from_value(filter_json, &FilterLimits::default()).unwrap().validate(&limits);
        prop_assert_eq!(by_parse.map_err(|e| e.to_string()), by_validate.map_err(|e| e.to_string()));
    }

    #[test]
    fn payload_round_trips(map in arb_payload()) {
        let payload = Payload::from_value(Value::Object(map.unwrap_or_default()), &PayloadLimits::default()).unwrap();
        let bytes = payload.encode();
        prop_assert_eq!(Payload::decode(&bytes).unwrap(), payload.clone());
        prop_assert_eq!(Payload::from_json_bytes(&bytes, &PayloadLimits::default()).unwrap(), payload);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Payload::from_json_bytes(&bytes, &PayloadLimits::default());
        let _ = Payload::decode(&bytes);
        let _ = Filter::from_json_bytes(&bytes, &FilterLimits::default());
    }

    #[test]
    fn json_ish_text_never_panics(text in arb_json_ish()) {
        let tight = PayloadLimits { max_bytes: 64, max_depth: 3 };
        let _ = Payload::from_json_bytes(text.as_bytes(), &PayloadLimits::default());
        let _ = Payload::from_json_bytes(text.as_bytes(), &tight);
        if let Ok(filter) = Filter::from_json_bytes(text.as_bytes(), &FilterLimits::default()) {
            let _ = filter.matches(None);
            filter.validate(&FilterLimits::default()).unwrap();
        }
    }

    #[test]
    fn arbitrary_values_never_panic(value in arb_payload_value(), filter_json in arb_filter()) {
        let _ = Payload::from_value(value.clone(), &PayloadLimits::default());
        let _ = Filter::from_value(value.clone(), &FilterLimits::default());
        // A filter with a payload value spliced in somewhere it does not belong.
        let mut spliced = filter_json;
        spliced["must"] = json!([{"key": "a", "match": {"any": [value.clone()]}}, {"key": "a", "range": {"gt": value}}]);
        let _ = Filter::from_value(spliced, &FilterLimits::default());
    }
}

//! Tests for payloads and filters: semantics tables over a fixed corpus, rendered error messages,
//! hostile input, and properties checked against a small reference evaluator.

use expect_test::{Expect, expect};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

mod props;

/// Named points; `None` is a point without a payload.
const CORPUS: &[(&str, Option<&str>)] = &[
    ("none", None),
    ("empty", Some("{}")),
    (
        "red",
        Some(r#"{"color": "red", "price": 3, "stock": true, "tags": ["sale", "new"]}"#),
    ),
    (
        "blue",
        Some(r#"{"color": "blue", "price": 10.5, "stock": false, "tags": []}"#),
    ),
    (
        "green",
        Some(r#"{"color": "green", "price": 3.0, "tags": "new"}"#),
    ),
    (
        "shop",
        Some(r#"{"shop": {"city": "Oslo", "items": [{"price": 1}, {"price": [20, 30]}]}}"#),
    ),
    ("nulls", Some(r#"{"color": null, "tags": [null]}"#)),
    (
        "big",
        Some(r#"{"price": 18446744073709551615, "id": -9223372036854775808}"#),
    ),
    ("strings", Some(r#"{"color": "3", "price": "3"}"#)),
];

fn payload(json: &str) -> Payload {
    Payload::from_json_bytes(json.as_bytes(), &PayloadLimits::default()).unwrap()
}

fn filter(json: &str) -> Filter {
    Filter::from_json_bytes(json.as_bytes(), &FilterLimits::default()).unwrap()
}

/// Renders the names of the corpus points that `filter_json` matches.
#[track_caller]
fn check(filter_json: &str, expect: Expect) {
    let filter = filter(filter_json);
    let matched: Vec<&str> = CORPUS
        .iter()
        .filter(|(_, json)| filter.matches(json.map(payload).as_ref()))
        .map(|(name, _)| *name)
        .collect();
    expect.assert_eq(&matched.join(" "));
}

#[track_caller]
fn check_filter_err(filter_json: &str, expect: Expect) {
    check_filter_err_with(filter_json, &FilterLimits::default(), expect);
}

#[track_caller]
fn check_filter_err_with(filter_json: &str, limits: &FilterLimits, expect: Expect) {
    let err = Filter::from_json_bytes(filter_json.as_bytes(), limits).unwrap_err();
    assert!(err.is_user_error());
    expect.assert_eq(&err.to_string());
}

#[track_caller]
fn check_payload_err(json: &[u8], limits: &PayloadLimits, expect: Expect) {
    let err = Payload::from_json_bytes(json, limits).unwrap_err();
    assert!(err.is_user_error());
    expect.assert_eq(&err.to_string());
}

#[test]
fn empty_filter_matches_everything() {
    check(
        "{}",
        expect!["none empty red blue green shop nulls big strings"],
    );
    check(
        r#"{"must": [], "should": null, "must_not": [], "min_should": null}"#,
        expect!["none empty red blue green shop nulls big strings"],
    );
    assert!(filter("{}").is_empty());
    assert!(!filter(r#"{"must_not": [{}]}"#).is_empty());
}

#[test]
fn match_value_compares_by_kind() {
    check(
        r#"{"must": [{"key": "color", "match": {"value": "red"}}]}"#,
        expect!["red"],
    );
    // Integers match integers only: not 3.0, not "3".
    check(
        r#"{"must": [{"key": "price", "match": {"value": 3}}]}"#,
        expect!["red"],
    );
    check(
        r#"{"must": [{"key": "color", "match": {"value": "3"}}]}"#,
        expect!["strings"],
    );
    check(
        r#"{"must": [{"key": "stock", "match": {"value": false}}]}"#,
        expect!["blue"],
    );
    check(
        r#"{"must": [{"key": "price", "match": {"value": 18446744073709551615}}]}"#,
        expect!["big"],
    );
    check(
        r#"{"must": [{"key": "id", "match": {"value": -9223372036854775808}}]}"#,
        expect!["big"],
    );
    // Arrays: any element; a plain string and a one-element array behave alike.
    check(
        r#"{"must": [{"key": "tags", "match": {"value": "new"}}]}"#,
        expect!["red green"],
    );
}

#[test]
fn match_any_and_except() {
    check(
        r#"{"must": [{"key": "color", "match": {"any": ["blue", "red", "blue", 3, true]}}]}"#,
        expect!["red blue"],
    );
    check(
        r#"{"must": [{"key": "price", "match": {"any": [1, 3, "3"]}}]}"#,
        expect!["red strings"],
    );
    // Some string, integer or boolean value outside the list; nulls and missing keys never pass.
    check(
        r#"{"must": [{"key": "color", "match": {"except": ["red"]}}]}"#,
        expect!["blue green strings"],
    );
    check(
        r#"{"must": [{"key": "tags", "match": {"except": ["sale"]}}]}"#,
        expect!["red green"],
    );
    // Floats are not in the except domain: green's 3.0 and blue's 10.5 do not pass.
    check(
        r#"{"must": [{"key": "price", "match": {"except": [1]}}]}"#,
        expect!["red big strings"],
    );
    // None of the tags is "new".
    check(
        r#"{"must_not": [{"key": "tags", "match": {"any": ["new"]}}]}"#,
        expect!["none empty blue shop nulls big strings"],
    );
}

#[test]
fn range_compares_numbers_exactly() {
    check(
        r#"{"must": [{"key": "price", "range": {"gte": 3, "lt": 10.5}}]}"#,
        expect!["red green"],
    );
    check(
        r#"{"must": [{"key": "price", "range": {"gt": 3}}]}"#,
        expect!["blue big"],
    );
    check(
        r#"{"must": [{"key": "price", "range": {"lte": 3.0, "gt": null}}]}"#,
        expect!["red green"],
    );
    // 2^64 - 1 rounds to 2^64 as a float; compared exactly it is still below 2^64.
    check(
        r#"{"must": [{"key": "price", "range": {"lt": 18446744073709551616.0, "gt": 18446744073709551614}}]}"#,
        expect!["big"],
    );
    // Impossible ranges are accepted and match nothing.
    check(
        r#"{"must": [{"key": "price", "range": {"gt": 5, "lt": 1}}]}"#,
        expect![""],
    );
    // Strings are not numbers.
    check(
        r#"{"must": [{"key": "color", "range": {"gte": 0}}]}"#,
        expect![""],
    );
}

#[test]
fn is_empty_ignores_nulls() {
    check(
        r#"{"must": [{"key": "tags", "is_empty": true}]}"#,
        expect!["none empty blue shop nulls big strings"],
    );
    check(
        r#"{"must": [{"key": "tags", "is_empty": false}]}"#,
        expect!["red green"],
    );
    check(
        r#"{"must": [{"key": "shop.items", "is_empty": false}]}"#,
        expect!["shop"],
    );
}

#[test]
fn nested_paths_descend_into_arrays() {
    check(
        r#"{"must": [{"key": "shop.items.price", "match": {"value": 30}}]}"#,
        expect!["shop"],
    );
    check(
        r#"{"must": [{"key": "shop.items.price", "range": {"gt": 5, "lt": 25}}]}"#,
        expect!["shop"],
    );
    check(
        r#"{"must": [{"key": "shop.city", "match": {"value": "Oslo"}}]}"#,
        expect!["shop"],
    );
    // A path through a scalar finds nothing.
    check(
        r#"{"must": [{"key": "color.name", "is_empty": false}]}"#,
        expect![""],
    );
}

#[test]
fn combinators() {
    check(
        r#"{"should": [{"key": "color", "match": {"value": "red"}}, {"key": "stock", "match": {"value": false}}]}"#,
        expect!["red blue"],
    );
    check(
        r#"{"should": [{"key": "price", "range": {"gte": 3}}, {"key": "tags", "match": {"value": "new"}}], "min_should": 2}"#,
        expect!["red green"],
    );
    check(
        r#"{"should": [{"key": "color", "match": {"value": "red"}}], "min_should": 0}"#,
        expect!["none empty red blue green shop nulls big strings"],
    );
    check(
        r#"{"must_not": [{"key": "color", "is_empty": true}, {"key": "price", "range": {"gt": 5}}]}"#,
        expect!["red green strings"],
    );
    check(
        r#"{"must": [{"key": "price", "range": {"gte": 1}}],
            "should": [{"must": [{"key": "color", "match": {"value": "blue"}}]},
                       {"must_not": [{"key": "tags", "is_empty": true}], "must": [{"key": "stock", "match": {"value": true}}]}],
            "must_not": [{"key": "color", "match": {"value": "green"}}]}"#,
        expect!["red blue"],
    );
    // A nested filter of only negations matches points without payload.
    check(
        r#"{"must": [{"must_not": [{"key": "color", "match": {"any": ["red", "blue"]}}]}]}"#,
        expect!["none empty green shop nulls big strings"],
    );
}

#[test]
fn get_path_flattens_arrays() {
    let payload = payload(CORPUS[5].1.unwrap());
    let render = |key: &str| {
        let values: Vec<String> = payload
            .get_path(key)
            .iter()
            .map(|v| v.to_string())
            .collect();
        values.join(" ")
    };
    expect!["1 20 30"].assert_eq(&render("shop.items.price"));
    expect![[r#"{"price":1} {"price":[20,30]}"#]].assert_eq(&render("shop.items"));
    expect![[r#""Oslo""#]].assert_eq(&render("shop.city"));
    expect![""].assert_eq(&render("shop.missing"));
    expect![""].assert_eq(&render("shop.city.name"));
}

#[test]
fn filter_errors() {
    check_filter_err(
        "[]",
        expect!["invalid filter: expected a JSON object, got an array"],
    );
    check_filter_err(
        r#"{"mustt": []}"#,
        expect![[
            r#"invalid filter: unknown field "mustt", expected one of must, should, must_not, min_should"#
        ]],
    );
    check_filter_err(
        r#"{"must": {"key": "a", "match": {"value": 1}}}"#,
        expect!["invalid filter: must: expected an array of conditions, got an object"],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "match": {"value": 1}}, 7]}"#,
        expect!["invalid filter: must[1]: expected a condition object, got the integer 7"],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "mach": {"value": 1}}]}"#,
        expect![[
            r#"invalid filter: must[0]: unknown field "mach", expected one of key, match, range, is_empty"#
        ]],
    );
    check_filter_err(
        r#"{"must": [{"kee": "a"}]}"#,
        expect![[
            r#"invalid filter: must[0]: unknown field "kee", expected a field condition (key with one of match, range, is_empty) or a nested filter (must, should, must_not, min_should)"#
        ]],
    );
    check_filter_err(
        r#"{"must": [{"match": {"value": 1}}]}"#,
        expect!["invalid filter: must[0]: key is required with match"],
    );
    check_filter_err(
        r#"{"must": [{"key": "a"}]}"#,
        expect![[
            r#"invalid filter: must[0]: a condition on key "a" needs one of match, range, is_empty"#
        ]],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "match": {"value": 1}, "range": {"gt": 1}}]}"#,
        expect![
            "invalid filter: must[0]: has both match and range, expected one of match, range, is_empty"
        ],
    );
    check_filter_err(
        r#"{"must": [{"key": 5, "is_empty": true}]}"#,
        expect!["invalid filter: must[0].key: expected a string, got the integer 5"],
    );
    check_filter_err(
        r#"{"must": [{"key": "", "is_empty": true}]}"#,
        expect!["invalid filter: must[0].key: must not be empty"],
    );
    check_filter_err(
        r#"{"must": [{"key": "a..b", "is_empty": true}]}"#,
        expect![[r#"invalid filter: must[0].key: "a..b" has an empty segment"#]],
    );
    check_filter_err(
        &format!(
            r#"{{"must": [{{"key": "{}", "is_empty": true}}]}}"#,
            "k".repeat(300)
        ),
        expect!["invalid filter: must[0].key is 300 bytes, limit 256"],
    );
    check_filter_err(
        r#"{"should": [{"key": "a", "is_empty": 1}]}"#,
        expect!["invalid filter: should[0].is_empty: expected true or false, got the integer 1"],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "match": {"value": 1.5}}]}"#,
        expect![
            "invalid filter: must[0].match.value: expected a string, integer or boolean, got the float 1.5; use range for floats"
        ],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "match": {"value": null}}]}"#,
        expect![
            "invalid filter: must[0].match.value: expected a string, integer or boolean, got null"
        ],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "match": {"vale": 1}}]}"#,
        expect![[
            r#"invalid filter: must[0].match: unknown field "vale", expected one of value, any, except"#
        ]],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "match": {}}]}"#,
        expect!["invalid filter: must[0].match: expected one of value, any, except"],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "match": {"value": 1, "any": [1]}}]}"#,
        expect![
            "invalid filter: must[0].match: has both value and any, expected one of value, any, except"
        ],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "match": "red"}]}"#,
        expect![[
            r#"invalid filter: must[0].match: expected an object with one of value, any, except, got the string "red""#
        ]],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "match": {"any": []}}]}"#,
        expect!["invalid filter: must[0].match.any: must not be empty"],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "match": {"any": "red"}}]}"#,
        expect![[
            r#"invalid filter: must[0].match.any: expected an array of strings, integers or booleans, got the string "red""#
        ]],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "match": {"except": ["x", ["y"]]}}]}"#,
        expect![
            "invalid filter: must[0].match.except[1]: expected a string, integer or boolean, got an array"
        ],
    );
    let many: Vec<usize> = (0..2000).collect();
    check_filter_err(
        &json!({"must": [{"key": "a", "match": {"any": many}}]}).to_string(),
        expect!["invalid filter: must[0].match.any has 2000 values, limit 1024"],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "range": {}}]}"#,
        expect!["invalid filter: must[0].range: at least one of gt, gte, lt, lte is required"],
    );
    check_filter_err(
        r#"{"must": [{}, {}, {"key": "a", "range": {"gt": null}}]}"#,
        expect!["invalid filter: must[2].range: at least one of gt, gte, lt, lte is required"],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "range": {"gt": "5"}}]}"#,
        expect![[
            r#"invalid filter: must[0].range.gt: expected a finite number, got the string "5""#
        ]],
    );
    check_filter_err(
        r#"{"must": [{"key": "a", "range": {"gtt": 5}}]}"#,
        expect![[
            r#"invalid filter: must[0].range: unknown field "gtt", expected one of gt, gte, lt, lte"#
        ]],
    );
    check_filter_err(
        r#"{"should": [{"key": "a", "is_empty": true}], "min_should": 2}"#,
        expect!["invalid filter: min_should is 2 but should has 1 conditions"],
    );
    check_filter_err(
        r#"{"must": [{"min_should": -1}]}"#,
        expect![
            "invalid filter: must[0].min_should: expected a non-negative integer, got the integer -1"
        ],
    );
    check_filter_err(
        r#"{"must": [], "must": [{"key": "a", "is_empty": true}]}"#,
        expect![[r#"invalid filter: duplicate key "must" at line 1 column 19"#]],
    );
    check_filter_err(
        r#"{"must": [}"#,
        expect!["invalid filter: malformed JSON: expected value at line 1 column 11"],
    );
    check_filter_err(
        r#"{} {}"#,
        expect!["invalid filter: malformed JSON: trailing characters at line 1 column 4"],
    );
}

#[test]
fn filter_limit_errors() {
    let nested = |depth: usize| {
        let mut filter = json!({"key": "a", "is_empty": true});
        for _ in 0..depth {
            filter = json!({"must": [filter]});
        }
        filter.to_string()
    };
    filter(&nested(8));
    check_filter_err(
        &nested(9),
        expect![
            "invalid filter: must[0].must[0].must[0].must[0].must[0].must[0].must[0].must[0]: filter nested 9 levels deep, limit 8"
        ],
    );
    // Far too deep for the filter limits: rejected on the raw bytes, before parsing.
    check_filter_err(
        &nested(50),
        expect!["invalid filter: JSON nested too deeply at byte 90: filters nest at most 8 levels"],
    );
    let conditions: Vec<Value> = (0..200)
        .map(|_| json!({"key": "a", "is_empty": true}))
        .collect();
    check_filter_err(
        &json!({"must": conditions, "should": [{"must": conditions}]}).to_string(),
        expect![
            "invalid filter: too many conditions: should[0].must brings the total to 401, limit 256 counting nested filters"
        ],
    );
    let tight = FilterLimits {
        max_conditions: 2,
        max_depth: 2,
        max_any: 2,
        max_key_bytes: 3,
    };
    check_filter_err_with(
        r#"{"must": [{"key": "a", "match": {"except": [1, 2, 3]}}]}"#,
        &tight,
        expect!["invalid filter: must[0].match.except has 3 values, limit 2"],
    );
    check_filter_err_with(
        r#"{"must": [{"key": "abcd", "is_empty": true}]}"#,
        &tight,
        expect!["invalid filter: must[0].key is 4 bytes, limit 3"],
    );
}

/// `validate` with tighter limits reports what parsing with those limits would have.
#[test]
fn validate_matches_parse() {
    let tight = FilterLimits {
        max_conditions: 3,
        max_depth: 2,
        max_any: 2,
        max_key_bytes: 3,
    };
    let cases = [
        r#"{"must": [{"key": "a", "match": {"any": [1, 2, 3]}}]}"#,
        r#"{"must": [{"key": "abcd", "is_empty": true}]}"#,
        r#"{"must": [{"must": [{"must": []}]}]}"#,
        r#"{"must": [{}], "should": [{}, {}], "must_not": [{}]}"#,
        r#"{"must": [{"key": "a", "match": {"any": [1, 2]}}]}"#,
    ];
    let rendered: Vec<String> = cases
        .iter()
        .map(|case| {
            let by_parse = Filter::from_json_bytes(case.as_bytes(), &tight).map(drop);
            let by_validate = filter(case).validate(&tight);
            assert_eq!(
                by_parse.as_ref().map_err(ToString::to_string),
                by_validate.as_ref().map_err(ToString::to_string)
            );
            match by_validate {
                Ok(()) => "ok".to_owned(),
                Err(err) => err.to_string(),
            }
        })
        .collect();
    expect![[r#"
        invalid filter: must[0].match.any has 3 values, limit 2
        invalid filter: must[0].key is 4 bytes, limit 3
        invalid filter: must[0].must[0]: filter nested 3 levels deep, limit 2
        invalid filter: too many conditions: must_not brings the total to 4, limit 3 counting nested filters
        ok"#]]
    .assert_eq(&rendered.join("\n"));
}

#[test]
fn payload_errors() {
    let limits = PayloadLimits::default();
    check_payload_err(
        b"[1, 2]",
        &limits,
        expect!["invalid payload: expected a JSON object, got an array"],
    );
    check_payload_err(
        br#""text""#,
        &limits,
        expect![[r#"invalid payload: expected a JSON object, got the string "text""#]],
    );
    check_payload_err(
        br#"{"a": 1"#,
        &limits,
        expect!["invalid payload: malformed JSON: EOF while parsing an object at line 1 column 7"],
    );
    check_payload_err(
        br#"{"a": 1, "a": 2}"#,
        &limits,
        expect![[r#"invalid payload: duplicate key "a" at line 1 column 12"#]],
    );
    check_payload_err(
        &vec![b' '; 70_000],
        &limits,
        expect!["payload is 70000 bytes, over the 65536 byte limit"],
    );
    let tight = PayloadLimits {
        max_bytes: 20,
        max_depth: 2,
    };
    check_payload_err(
        br#"{"a": {"b": [1]}}"#,
        &tight,
        expect!["invalid payload: nested deeper than the limit of 2 levels (at byte 12)"],
    );
    // Depth 2 exactly is fine, and brackets inside strings do not count.
    Payload::from_json_bytes(
        br#"{"a": {"b": "[[{\"{"}}"#,
        &PayloadLimits {
            max_bytes: 100,
            max_depth: 2,
        },
    )
    .unwrap();
    // The input fits, but its canonical encoding `{"a":100000000.0}` does not.
    check_payload_err(
        br#"{"a":1e8}"#,
        &PayloadLimits {
            max_bytes: 12,
            max_depth: 2,
        },
        expect!["payload is 17 bytes, over the 12 byte limit"],
    );
    let err = Payload::from_value(json!({"a": [[[]]]}), &tight).unwrap_err();
    expect!["invalid payload: nested deeper than the limit of 2 levels"]
        .assert_eq(&err.to_string());
    let err = Payload::from_value(json!({"a": "0123456789abcdef"}), &tight).unwrap_err();
    expect!["payload is 24 bytes, over the 20 byte limit"].assert_eq(&err.to_string());
    let err = Payload::from_value(json!(null), &tight).unwrap_err();
    expect!["invalid payload: expected a JSON object, got null"].assert_eq(&err.to_string());
    let err = Payload::decode(b"[]").unwrap_err();
    expect!["invalid payload: expected a JSON object, got an array"].assert_eq(&err.to_string());
}

#[test]
fn payload_encode_decode() {
    let payload = payload(r#"{ "b": [1, 2.5, "x", null], "a": {"c": true} }"#);
    let bytes = payload.encode();
    expect![[r#"{"a":{"c":true},"b":[1,2.5,"x",null]}"#]]
        .assert_eq(std::str::from_utf8(&bytes).unwrap());
    assert_eq!(Payload::decode(&bytes).unwrap(), payload);
    let value = payload.clone().into_value();
    assert_eq!(
        Payload::from_value(value, &PayloadLimits::default()).unwrap(),
        payload
    );
    assert_eq!(payload.as_map().len(), 2);
}

/// Deep nesting is rejected without overflowing the stack, however deep.
#[test]
fn deep_nesting_is_rejected() {
    let huge = PayloadLimits {
        max_bytes: 1 << 20,
        max_depth: usize::MAX,
    };
    for bytes in [
        "[".repeat(100_000),
        r#"{"a":"#.repeat(100_000),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    ] {
        let bytes = bytes.as_bytes();
        // serde_json's recursion limit of 128 applies under a generous depth limit.
        let err = Payload::from_json_bytes(bytes, &huge).unwrap_err();
        assert!(
            err.to_string().contains("recursion limit exceeded"),
            "{err}"
        );
        let err = Payload::from_json_bytes(
            bytes,
            &PayloadLimits {
                max_bytes: 1 << 20,
                ..PayloadLimits::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
        let err = Filter::from_json_bytes(bytes, &FilterLimits::default()).unwrap_err();
        assert!(err.to_string().contains("nested too deeply"), "{err}");
        let huge_filter = FilterLimits {
            max_depth: usize::MAX,
            ..FilterLimits::default()
        };
        let err = Filter::from_json_bytes(bytes, &huge_filter).unwrap_err();
        assert!(
            err.to_string().contains("recursion limit exceeded"),
            "{err}"
        );
    }
    // A deep value built in memory is measured without recursion.
    let mut deep = json!(1);
    for _ in 0..500 {
        deep = json!({ "a": deep });
    }
    let err = Payload::from_value(deep, &PayloadLimits::default()).unwrap_err();
    expect!["invalid payload: nested deeper than the limit of 32 levels"]
        .assert_eq(&err.to_string());
}

#[test]
fn filter_serde_round_trip() {
    let json = r#"{"must": [{"key": "tags", "match": {"any": [3, "b", true, "a", "b"]}},
                            {"key": "price", "range": {"gte": 1, "lt": 2.5}}],
                   "should": [{"must_not": [{"key": "x.y", "is_empty": false}]},
                              {"key": "c", "match": {"except": [false]}}],
                   "min_should": 1}"#;
    let filter = filter(json);
    let canonical = serde_json::to_string(&filter).unwrap();
    expect![[
        r#"{"min_should":1,"must":[{"key":"tags","match":{"any":["a","b","b",3,true]}},{"key":"price","range":{"gte":1,"lt":2.5}}],"should":[{"must_not":[{"is_empty":false,"key":"x.y"}]},{"key":"c","match":{"except":[false]}}]}"#
    ]]
    .assert_eq(&canonical);
    let back: Filter = serde_json::from_str(&canonical).unwrap();
    assert_eq!(back, filter);
    // Deserialize applies the default limits and the same messages.
    let err = serde_json::from_str::<Filter>(r#"{"must": [{"key": ""}]}"#).unwrap_err();
    expect!["invalid filter: must[0].key: must not be empty"].assert_eq(&err.to_string());
}

#[test]
fn strict_object_refuses_duplicate_keys_at_every_level_and_non_objects() {
    #[derive(serde::Deserialize)]
    struct Body {
        #[allow(dead_code)]
        filter: Option<StrictObject>,
    }
    let parse = |text: &str| {
        serde_json::from_str::<Body>(text)
            .map(|body| body.filter.map(|o| Value::Object(o.0)))
            // Without the position, which says only where serde_json was.
            .map_err(|err| {
                err.to_string()
                    .split(" at line")
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
    };
    assert_eq!(
        parse(r#"{"filter": {"must": [{"key": "a", "is_empty": true}]}}"#),
        Ok(Some(json!({"must": [{"key": "a", "is_empty": true}]})))
    );
    assert_eq!(parse(r#"{"filter": null}"#), Ok(None));
    assert_eq!(
        parse(r#"{"filter": {"must": [], "must": []}}"#),
        Err(r#"duplicate key "must""#.to_owned())
    );
    assert_eq!(
        parse(r#"{"filter": {"must": [{"key": "a", "key": "b"}]}}"#),
        Err(r#"duplicate key "key""#.to_owned())
    );
    assert_eq!(
        parse(r#"{"filter": [1]}"#),
        Err("expected a JSON object, got an array".to_owned())
    );
}

#[test]
fn json_bounds_of_the_limits_admit_the_largest_valid_filter() {
    let limits = FilterLimits::default();
    assert_eq!(limits.max_json_depth(), 20);
    assert_eq!(limits.max_json_values(), 256 * (1024 + 4) + 5);
    // The largest valid filter by values: every condition a full `any` list.
    let any: Vec<Value> = (0..1024).map(|i| json!(i)).collect();
    let conditions: Vec<Value> = (0..256)
        .map(|_| json!({"key": "a", "match": {"any": any}}))
        .collect();
    let filter = json!({"must": conditions, "should": null, "must_not": null, "min_should": null});
    let mut values = 0;
    let mut stack = vec![&filter];
    while let Some(value) = stack.pop() {
        values += 1;
        match value {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    assert!(values <= limits.max_json_values(), "{values}");
    assert!(Filter::from_value(filter, &limits).is_ok());
}

//! A large request's memory: its body's parsed form becomes the operation sent to a worker
//! without being held twice (`proto::json::map_into_struct`), so that what a large body takes
//! stays near what the large-message budget reserves for it (`api::budget`).

use peak_alloc::PeakAlloc;
use serde_json::json;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

#[test]
fn a_parsed_filter_becomes_the_operation_without_being_held_twice() {
    // The noisy-neighbour benchmark's maximal filter: 256 conditions of 1,024 values (2.5 MB).
    let values: Vec<String> = (0..1024).map(|i| format!("tag-{i}")).collect();
    let conditions: Vec<_> = (0..256)
        .map(|i| json!({"key": format!("field{i}"), "match": {"any": values}}))
        .collect();
    let body = serde_json::to_vec(&json!({
        "vector": vec![0.5f32; 128],
        "top_k": 10,
        "filter": {"should": conditions},
    }))
    .unwrap();
    drop(conditions);
    drop(values);

    let before = ALLOC.current_usage();
    let parsed: coordinator::http::dto::Search = serde_json::from_slice(&body).unwrap();
    let parsed_bytes = ALLOC.current_usage() - before;
    assert!(
        parsed_bytes > body.len(),
        "the parsed filter is larger than its text"
    );

    ALLOC.reset_peak_usage();
    let start = ALLOC.current_usage();
    let op = parsed.into_op("c".into());
    let extra = ALLOC.peak_usage().saturating_sub(start);
    // The conversion moves the parsed strings and reuses its lists: at no point does it hold a
    // second copy of the filter (which took `parsed_bytes` again when it copied).
    assert!(
        extra * 10 < parsed_bytes,
        "converting {parsed_bytes} parsed bytes took {extra} more at its peak"
    );
    assert!(op.encoded_len() > body.len() / 2);
}

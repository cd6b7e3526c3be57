use super::is_key_failure;

#[test]
fn key_failures_are_recognised_in_a_collection_load_failure() {
    let key = storage::Error::Key("the key service refused".into());
    assert!(is_key_failure(&key));
    // The engine stores a load failure as its message; this pins the rendering it relies on.
    let unavailable = storage::Error::CollectionUnavailable {
        name: "docs".into(),
        reason: key.to_string(),
    };
    assert!(is_key_failure(&unavailable));
    let damaged = storage::Error::CollectionUnavailable {
        name: "docs".into(),
        reason: storage::Error::Corrupt {
            path: "seg-1".into(),
            offset: 0,
            reason: "bad magic".into(),
        }
        .to_string(),
    };
    assert!(!is_key_failure(&damaged));
    assert!(!is_key_failure(&storage::Error::CollectionNotFound(
        "docs".into()
    )));
}

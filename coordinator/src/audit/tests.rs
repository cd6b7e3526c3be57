use serde_json::json;

use super::*;

const KEY: &[u8; 32] = b"audit key for tests, 32 bytes!!!";

fn key() -> AuditKey {
    AuditKey::new(KEY).unwrap()
}

fn draft(i: u64) -> Draft {
    Draft {
        time_ms: 1_700_000_000_000 + i,
        actor: if i.is_multiple_of(3) {
            "admin".into()
        } else {
            format!("key:k{i:07}")
        },
        action: ["tenant.create", "key.issue", "key.revoke", "kek.rotate"][i as usize % 4].into(),
        resource: format!("tenant-{}", i % 7),
        outcome: "ok".into(),
        details: json!({ "n": i, "tier": "free" }),
    }
}

fn chain(n: u64) -> Vec<AuditRow> {
    let key = key();
    let mut rows: Vec<AuditRow> = Vec::new();
    for i in 0..n {
        let row = AuditRow::append("acme", rows.last(), draft(i), &key).unwrap();
        rows.push(row);
    }
    rows
}

#[test]
fn an_untouched_chain_verifies_with_its_head() {
    let rows = chain(1000);
    let head = ChainHead::of("acme", rows.last(), &key());
    verify(&rows, Some(&key()), Some(&head)).unwrap();
    verify(&rows, None, None).unwrap();
    verify(
        &[],
        Some(&key()),
        Some(&ChainHead::of("acme", None, &key())),
    )
    .unwrap();
}

/// INV-18: modify, delete, insert and reorder at every position of a 1,000-row chain are detected
/// by the links and the signed head alone, and the verifier names the first bad row. (Signatures add
/// protection against a rewrite; see `a_rewrite_without_the_key_fails_the_signatures`.)
#[test]
fn every_edit_at_every_position_is_detected() {
    let rows = chain(1000);
    let head = ChainHead::of("acme", rows.last(), &key());
    let key: Option<&AuditKey> = None;
    let mut work = rows.clone();
    for i in 0..rows.len() {
        // Each edit is made on `work` and undone before the next, which is cheaper than a copy.
        work[i].outcome = "denied".into();
        assert_eq!(
            verify(&work, key, Some(&head)).unwrap_err().line,
            i + 1,
            "modify {i}"
        );
        work[i].outcome = rows[i].outcome.clone();

        let removed = work.remove(i);
        let err = verify(&work, key, Some(&head)).unwrap_err();
        assert_eq!(
            err.line,
            if i + 1 == rows.len() { 0 } else { i + 1 },
            "delete {i}"
        );
        work.insert(i, removed);

        work.insert(i, rows[i].clone());
        assert!(verify(&work, key, Some(&head)).is_err(), "insert {i}");
        work.remove(i);

        if i + 1 < rows.len() {
            work.swap(i, i + 1);
            assert_eq!(
                verify(&work, key, Some(&head)).unwrap_err().line,
                i + 1,
                "reorder {i}"
            );
            work.swap(i, i + 1);
        }
    }
    assert_eq!(work, rows);
}

#[test]
fn a_cut_tail_is_caught_by_the_signed_head() {
    let rows = chain(50);
    let key = key();
    let head = ChainHead::of("acme", rows.last(), &key);
    for keep in 0..rows.len() {
        let cut = &rows[..keep];
        // The chain alone cannot tell: every remaining link is intact.
        verify(cut, Some(&key), None).unwrap();
        let err = verify(cut, Some(&key), Some(&head)).unwrap_err();
        assert_eq!(err.line, 0, "keep {keep}: {err}");
    }
    // A head the attacker made without the key does not verify.
    let cut = &rows[..10];
    let mut forged = ChainHead::of("acme", cut.last(), &AuditKey::new(&[7u8; 32]).unwrap());
    assert!(verify(cut, Some(&key), Some(&forged)).is_err());
    forged.signature = head.signature.clone();
    assert!(verify(cut, Some(&key), Some(&forged)).is_err());
}

#[test]
fn a_rewrite_without_the_key_fails_the_signatures() {
    let mut rows = chain(20);
    // Edit row 8 and recompute every hash from there on, as someone with the database but not the
    // audit key could.
    let attacker = AuditKey::new(&[9u8; 32]).unwrap();
    let mut edited = draft(7);
    edited.outcome = "denied".into();
    let mut rebuilt: Vec<AuditRow> = rows[..7].to_vec();
    rebuilt.push(AuditRow::append("acme", rebuilt.last(), edited, &attacker).unwrap());
    for i in 8..20 {
        let row = AuditRow::append("acme", rebuilt.last(), draft(i), &attacker).unwrap();
        rebuilt.push(row);
    }
    verify(&rebuilt, None, None).unwrap();
    assert_eq!(verify(&rebuilt, Some(&key()), None).unwrap_err().line, 8);
    rows.truncate(0);
}

#[test]
fn exports_round_trip_as_json_lines_and_reject_unknown_fields() {
    let rows = chain(30);
    let export: String = rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    let parsed: Vec<AuditRow> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed, rows);
    verify(
        &parsed,
        Some(&key()),
        Some(&ChainHead::of("acme", rows.last(), &key())),
    )
    .unwrap();
    let mut value = serde_json::to_value(&rows[0]).unwrap();
    value["sneaky"] = json!(1);
    assert!(serde_json::from_value::<AuditRow>(value).is_err());
    // Rows never carry the key.
    assert!(
        !export.contains(&hex::encode(KEY)) && !export.contains(std::str::from_utf8(KEY).unwrap())
    );
}

static_assertions::assert_not_impl_any!(AuditKey: std::fmt::Debug, std::fmt::Display, PartialEq, Clone);

/// A signed head kept earlier anchors every later, longer export: the chain must pass through it.
/// Several heads can be checked at once; a cut below any of them, or a rewrite up to one, fails.
#[test]
fn earlier_heads_anchor_longer_exports_as_prefixes() {
    let rows = chain(50);
    let key = key();
    let at = |seq: usize| ChainHead::of("acme", rows[..seq].last(), &key);
    let anchors = [at(10), at(30), at(50)];
    verify_anchored(&rows, Some(&key), &anchors).unwrap();
    verify(&rows, Some(&key), Some(&at(20))).unwrap();
    verify(&rows, Some(&key), Some(&at(0))).unwrap();
    // Cut below the second anchor: caught, whatever the other anchors say.
    let err = verify_anchored(&rows[..25], Some(&key), &anchors[..2]).unwrap_err();
    assert!(err.reason.contains("tail was cut"), "{err}");
    // Cut after row 5 and regrown, even with valid signatures: the row at the anchor's seq no
    // longer has the anchor's hash.
    let attacker = AuditKey::new(&[9u8; 32]).unwrap();
    let mut regrown: Vec<AuditRow> = rows[..5].to_vec();
    for i in 5..50 {
        let row = AuditRow::append("acme", regrown.last(), draft(i + 100), &key).unwrap();
        regrown.push(row);
    }
    verify(&regrown, Some(&key), None).unwrap();
    let err = verify_anchored(&regrown, Some(&key), &anchors[..1]).unwrap_err();
    assert!(err.reason.contains("does not match"), "{err}");
    // An anchor of another chain, or forged without the key, is refused.
    let other = ChainHead::of("beta", rows[..10].last(), &key);
    assert!(verify_anchored(&rows, Some(&key), &[other]).is_err());
    let forged = ChainHead::of("acme", rows[..10].last(), &attacker);
    assert!(verify_anchored(&rows, Some(&key), &[forged]).is_err());
}

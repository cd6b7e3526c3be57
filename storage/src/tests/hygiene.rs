//! INV-08: no key material and no vector data in logs or error messages.

use std::io::Write;
use std::sync::Arc;

use base64::Engine as _;
use parking_lot::Mutex;

use super::{keys, tenant};
use crate::Engine;
use crate::collection::{CollectionConfig, Limits, PointInput, SearchRequest};
use crate::ids::{CollectionName, PointId};
use crate::index::Metric;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logs_and_errors_carry_no_keys_or_vectors() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Global, so the collections' background threads are captured too.
    let _ = tracing::subscriber::set_global_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a", "b"]);
    let root_key = std::fs::read(dir.path().join("root.key")).unwrap();
    let t = tenant("a");
    let name = CollectionName::parse("docs").unwrap();
    let limits = Limits {
        segment_points: 200,
        max_batch: 100,
        ..Limits::default()
    };
    let mut errors = Vec::new();
    {
        let engine = Engine::open(&dir.path().join("data"), keys.clone(), limits).unwrap();
        let c = engine
            .create_collection(&t, &name, CollectionConfig::new(4, Metric::L2))
            .unwrap();
        for batch in 0..5u64 {
            let points = (0..100)
                .map(|i| PointInput {
                    id: PointId::Num(batch * 100 + i),
                    vector: vec![1234.5677, -987.6543, 0.0, i as f32],
                    payload: None,
                })
                .collect();
            c.upsert(points).unwrap();
        }
        c.flush().unwrap();
        let req = SearchRequest {
            vector: vec![1234.5677, -987.6543, 0.0, 1.0],
            top_k: 3,
            ..Default::default()
        };
        c.search(&req).unwrap();
        errors.push(
            c.upsert(vec![PointInput {
                id: PointId::Num(1),
                vector: vec![1234.5677, f32::NAN, 0.0, 0.0],
                payload: None,
            }])
            .unwrap_err()
            .to_string(),
        );
        keys.rotate_kek(&t).unwrap();
        engine.rewrap_tenant(&t).unwrap();
    }
    // Tamper with a segment and open it again: the failure is logged and returned.
    let coll_dir = dir.path().join("data/tenants/a/docs");
    let seg = std::fs::read_dir(&coll_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    let engine = Engine::open(&dir.path().join("data"), keys.clone(), limits).unwrap();
    errors.push(format!("{:?}", engine.collection(&t, &name).unwrap_err()));
    errors.push(
        engine
            .collection(&tenant("b"), &name)
            .unwrap_err()
            .to_string(),
    );
    keys.destroy_tenant(&t).unwrap();
    drop(engine);
    let engine = Engine::open(&dir.path().join("data"), keys.clone(), limits).unwrap();
    errors.push(format!("{:?}", engine.collection(&t, &name).unwrap_err()));
    drop(engine);

    let mut text = String::from_utf8_lossy(&capture.0.lock()).into_owned();
    for error in &errors {
        text.push_str(error);
        text.push('\n');
    }
    assert!(!errors.is_empty() && errors.iter().all(|e| !e.is_empty()));
    // The capture works: it holds the background thread's sealing lines and the tamper error.
    assert!(
        text.contains("sealed segment") && text.contains("failed authentication"),
        "capture is empty:\n{text}"
    );
    let forbidden = [
        hex::encode(&root_key),
        hex::encode_upper(&root_key),
        base64::engine::general_purpose::STANDARD.encode(&root_key),
        "1234.5677".to_owned(),
        "1234.56".to_owned(),
        "987.65".to_owned(),
    ];
    for needle in &forbidden {
        assert!(
            !text.contains(needle.as_str()),
            "{needle} appears in logs or errors:\n{text}"
        );
    }
}

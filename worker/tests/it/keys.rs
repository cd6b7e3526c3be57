use proto::vaultvec::cluster::v1 as cluster;
use proto::vaultvec::v1 as api;

use crate::fake::*;

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn key_service_refusals_become_unavailable_and_the_tenant_recovers() {
    let mut setup = Setup::new(4).await;
    let conn = &mut setup.conn;

    // Creating a collection needs a new DEK: refused by the key service, the request is refused.
    conn.key_error = Some(ErrorCode::PermissionDenied);
    let message = conn
        .refused(create("fresh", 2, api::Metric::Dot), ErrorCode::Unavailable)
        .await;
    assert!(
        message.contains("ERROR_CODE_PERMISSION_DENIED"),
        "{message}"
    );

    // Loading existing files needs their DEKs: the collection is unavailable, nothing panics.
    assert_eq!(
        conn.release(TENANT, 1).await,
        Body::Ack(cluster::Ack::default())
    );
    conn.assign(TENANT, 1, no_quota()).await;
    conn.key_error = Some(ErrorCode::DataLoss);
    conn.refused(count("docs", None), ErrorCode::Unavailable)
        .await;
    conn.refused(
        upsert("docs", vec![point(9, vec![1.0, 1.0], None)]),
        ErrorCode::Unavailable,
    )
    .await;

    // Once the key service answers again, the tenant loads and nothing was lost or applied.
    conn.key_error = None;
    assert_eq!(conn.count("docs").await, 4);
    conn.op(create("fresh", 2, api::Metric::Dot)).await.unwrap();
    setup.stop().await;
}

#[tokio::test]
async fn a_write_refused_for_lack_of_a_key_is_retriable_and_the_tenant_keeps_serving() {
    let Setup {
        coordinator: _coordinator,
        mut conn,
        worker,
        dir: _dir,
    } = Setup::with(4, |config| {
        config.limits.segment_points = 4;
        config.limits.max_batch = 4;
    })
    .await;

    // The growing segment is full, so this write needs a new WAL file and with it a new DEK.
    conn.key_error = Some(ErrorCode::Unavailable);
    conn.refused(
        upsert("docs", vec![point(5, vec![5.0, 0.0], None)]),
        ErrorCode::Unavailable,
    )
    .await;
    // What is in memory keeps answering: the tenant is not unloaded, which would need the key
    // service to load it again.
    assert_eq!(conn.count("docs").await, 4);

    // Once the key service answers, the same write succeeds: the collection was not poisoned.
    conn.key_error = None;
    conn.op(upsert("docs", vec![point(5, vec![5.0, 0.0], None)]))
        .await
        .unwrap();
    assert_eq!(conn.count("docs").await, 5);
    // The background thread retries sealing the full segment; keep answering its key calls
    // while the worker shuts down.
    worker.signal_stop();
    assert!(conn.closed().await, "no Close frame");
    worker.stop().await;
}

#[tokio::test]
async fn the_worker_holds_no_key_encryption_key_and_no_plaintext_dek() {
    let Setup {
        worker,
        dir,
        conn,
        coordinator,
    } = Setup::new(6).await;
    worker.stop().await;
    drop((conn, coordinator));
    let dir = dir.path();
    // Only the engine's files are on the worker's disk: manifests, WALs and segments, all of them
    // encrypted under DEKs whose wrapped form alone is stored. No key file of any kind.
    for path in files(dir) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("MANIFEST") || name.starts_with("wal-") || name.starts_with("seg-"),
            "unexpected file {}",
            path.display()
        );
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(8).any(|w| w == b"VVKEKS\x00\x01"),
            "{}",
            path.display()
        );
    }
}

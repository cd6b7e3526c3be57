use proto::vaultvec::cluster::v1 as cluster;

use crate::fake::*;

use cluster::transfer_tenant::Step;

fn transfer(tenant: &str, step: Step) -> Body {
    Body::TransferTenant(cluster::TransferTenant {
        tenant: tenant.into(),
        step: Some(step),
    })
}

fn files(body: Body) -> Vec<cluster::TenantFile> {
    match body {
        Body::TransferTenantResponse(answer) => answer.files,
        other => panic!("not a transfer answer: {other:?}"),
    }
}

fn refusal(body: &Body) -> String {
    match body {
        Body::Error(err) => err.message.clone(),
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn an_assigned_tenant_is_not_copied_and_a_released_one_is_listed_read_and_dropped() {
    let mut setup = Setup::new(20).await;
    let conn = &mut setup.conn;
    let export = || {
        transfer(
            TENANT,
            Step::ExportFiles(cluster::ExportFiles { live: false }),
        )
    };
    let message = refusal(&conn.call(export()).await);
    assert!(message.contains("assigned"), "{message}");
    // A replica's catch-up lists and reads a copy that keeps serving; nothing that writes runs
    // on an assigned tenant.
    let live = files(
        conn.call(transfer(
            TENANT,
            Step::ExportFiles(cluster::ExportFiles { live: true }),
        ))
        .await,
    );
    assert!(live.iter().any(|f| f.path == "docs/MANIFEST"), "{live:?}");
    let Body::TransferTenantResponse(piece) = conn
        .call(transfer(
            TENANT,
            Step::ReadFile(cluster::ReadFile {
                path: "docs/MANIFEST".into(),
                offset: 0,
                max_len: 1 << 20,
            }),
        ))
        .await
    else {
        panic!("a read of an assigned tenant's file");
    };
    assert!(!piece.data.is_empty());
    for writing in [
        Step::ImportBegin(cluster::ImportBegin {
            max_files: 1,
            max_bytes: 1,
        }),
        Step::DropFiles(cluster::DropFiles {}),
    ] {
        let message = refusal(&conn.call(transfer(TENANT, writing)).await);
        assert!(message.contains("assigned"), "{message}");
    }

    // Released at a newer epoch (a move fences first): an assignment that raced the release,
    // under the older epoch, cannot bring the tenant back here.
    assert_eq!(
        conn.release(TENANT, 2).await,
        Body::Ack(cluster::Ack::default())
    );
    assert_eq!(
        error_code(&conn.assign(TENANT, 1, no_quota()).await),
        Some(ErrorCode::StaleEpoch)
    );

    let listed = files(conn.call(export()).await);
    let manifest = listed
        .iter()
        .find(|f| f.path == "docs/MANIFEST")
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert!(
        listed.iter().all(|f| f.sha256.len() == 32 && f.len > 0),
        "{listed:?}"
    );
    let read = |path: &str, offset: u64| {
        transfer(
            TENANT,
            Step::ReadFile(cluster::ReadFile {
                path: path.into(),
                offset,
                max_len: u32::MAX,
            }),
        )
    };
    let Body::TransferTenantResponse(piece) = conn.call(read("docs/MANIFEST", 0)).await else {
        panic!("a read");
    };
    assert_eq!(piece.data.len() as u64, manifest.len);
    for hostile in [
        "../../etc/passwd",
        "/etc/passwd",
        "docs/../../x",
        "docs/MANIFEST.tmp",
    ] {
        refusal(&conn.call(read(hostile, 0)).await);
    }

    // An import into another tenant's name: bounded by what its start declared, hostile names
    // refused, nothing of it staying after an abort.
    let other = "other";
    let step = |s| transfer(other, s);
    conn.call(step(Step::ImportBegin(cluster::ImportBegin {
        max_files: 1,
        max_bytes: 10,
    })))
    .await;
    let piece = |path: &str, data: &[u8]| {
        Step::ImportPiece(cluster::ImportPiece {
            path: path.into(),
            offset: 0,
            data: data.to_vec(),
        })
    };
    for hostile in ["../escape", "docs/sub/seg-1", "docs/seg-1/../../x"] {
        refusal(&conn.call(step(piece(hostile, b"x"))).await);
    }
    refusal(&conn.call(step(piece("docs/seg-1", b"eleven bytes"))).await);
    let Body::TransferTenantResponse(_) = conn.call(step(piece("docs/seg-1", b"ten bytes!"))).await
    else {
        panic!("a piece within the limits is taken");
    };
    refusal(&conn.call(step(piece("docs/seg-2", b""))).await);
    conn.call(step(Step::ImportAbort(cluster::ImportAbort {})))
        .await;
    let tenants = setup.dir.path().join("tenants");
    assert!(!tenants.join(".import-other").exists());
    assert!(!tenants.join(other).exists());

    // Dropping the released tenant's copy deletes its files (its keys stay with the coordinator).
    assert!(tenants.join(TENANT).exists());
    let conn = &mut setup.conn;
    let dropped = conn
        .call(transfer(TENANT, Step::DropFiles(cluster::DropFiles {})))
        .await;
    assert!(
        matches!(dropped, Body::TransferTenantResponse(_)),
        "{dropped:?}"
    );
    assert!(!tenants.join(TENANT).exists());
    setup.stop().await;
}

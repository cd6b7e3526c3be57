use proto::vaultvec::cluster::v1 as cluster;
use proto::vaultvec::v1 as api;

use crate::fake::*;

fn one_point(id: u64) -> Op {
    upsert("docs", vec![point(id, vec![id as f32, 1.0], None)])
}

#[tokio::test]
async fn a_tenant_not_assigned_here_is_refused_and_nothing_applies() {
    let mut setup = Setup::new(2).await;
    let conn = &mut setup.conn;
    setup.coordinator.ensure_tenant("other");
    let body = conn
        .call(tenant_request(
            "other",
            1,
            create("docs", 2, api::Metric::L2),
        ))
        .await;
    assert_eq!(error_code(&body), Some(ErrorCode::NotAssigned));
    let body = conn
        .call(tenant_request("not a tenant!", 1, count("docs", None)))
        .await;
    assert_eq!(error_code(&body), Some(ErrorCode::NotAssigned));
    // Nothing was created for the other tenant.
    assert!(!setup.dir.path().join("tenants").join("other").exists());

    // A released tenant is no longer served.
    assert_eq!(
        conn.release(TENANT, 1).await,
        Body::Ack(cluster::Ack::default())
    );
    conn.refused(one_point(9), ErrorCode::NotAssigned).await;
    conn.assign(TENANT, 1, no_quota()).await;
    assert_eq!(conn.count("docs").await, 2);
    setup.stop().await;
}

#[tokio::test]
async fn a_stale_epoch_is_refused_and_nothing_applies() {
    let mut setup = Setup::new(2).await;
    let conn = &mut setup.conn;
    // The placement moves on to epoch 3.
    assert_eq!(
        conn.assign(TENANT, 3, no_quota()).await,
        Body::Ack(cluster::Ack::default())
    );
    for epoch in [1, 2, 4] {
        let err = conn.op_for(TENANT, epoch, one_point(9)).await.unwrap_err();
        assert_eq!(
            err.code(),
            ErrorCode::StaleEpoch,
            "epoch {epoch}: {}",
            err.message
        );
    }
    // An assignment or release with a lower epoch cannot undo the newer one.
    assert_eq!(
        error_code(&conn.assign(TENANT, 2, no_quota()).await),
        Some(ErrorCode::StaleEpoch)
    );
    assert_eq!(
        error_code(&conn.release(TENANT, 2).await),
        Some(ErrorCode::StaleEpoch)
    );
    let Answer::Count(n) = conn.op_for(TENANT, 3, count("docs", None)).await.unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 2);
    setup.stop().await;
}

#[tokio::test]
async fn a_replayed_request_id_is_refused_and_nothing_applies() {
    let mut setup = Setup::new(2).await;
    let conn = &mut setup.conn;
    let id = 1_000;
    conn.send(id, 0, tenant_request(TENANT, 1, one_point(3)))
        .await;
    assert!(answer(conn.reply(id).await).is_ok());
    // The same id again, carrying another point.
    conn.send(id, 0, tenant_request(TENANT, 1, one_point(4)))
        .await;
    assert_eq!(error_code(&conn.reply(id).await), Some(ErrorCode::Replayed));
    // A replayed assignment is refused too.
    conn.send(
        id,
        0,
        Body::AssignTenant(cluster::AssignTenant {
            tenant: TENANT.into(),
            epoch: 9,
            quota: None,
        }),
    )
    .await;
    assert_eq!(error_code(&conn.reply(id).await), Some(ErrorCode::Replayed));
    assert_eq!(conn.count("docs").await, 3);
    setup.stop().await;
}

#[tokio::test]
async fn a_request_past_its_deadline_is_refused_and_nothing_applies() {
    let mut setup = Setup::new(2).await;
    let conn = &mut setup.conn;
    conn.send(500, 1, tenant_request(TENANT, 1, one_point(3)))
        .await;
    assert_eq!(
        error_code(&conn.reply(500).await),
        Some(ErrorCode::DeadlineExceeded)
    );
    // A deadline in the future is fine.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    conn.send(501, later, tenant_request(TENANT, 1, count("docs", None)))
        .await;
    assert!(answer(conn.reply(501).await).is_ok());
    assert_eq!(conn.count("docs").await, 2);
    setup.stop().await;
}

use proto::vaultvec::cluster::v1 as cluster;
use proto::vaultvec::v1 as api;

use crate::fake::*;

/// Unloads the tenant (release, then assign again under `epoch`), so its next request loads it
/// and asks the key service for DEKs.
async fn unload(conn: &mut Conn, epoch: u64) {
    assert_eq!(
        conn.release(TENANT, epoch - 1).await,
        Body::Ack(cluster::Ack::default())
    );
    assert_eq!(
        conn.assign(TENANT, epoch, no_quota()).await,
        Body::Ack(cluster::Ack::default())
    );
}

#[tokio::test]
async fn a_coordinator_without_key_batches_is_asked_one_key_at_a_time() {
    let coordinator = Coordinator::start().await;
    coordinator.ensure_tenant(TENANT);
    coordinator.without_key_batches();
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(coordinator.worker_config(dir.path()));
    let mut conn = coordinator.accept().await;
    conn.assign(TENANT, 1, no_quota()).await;
    conn.op(create("docs", 2, api::Metric::L2)).await.unwrap();
    conn.op(upsert("docs", vec![point(1, vec![1.0, 0.0], None)]))
        .await
        .unwrap();
    unload(&mut conn, 2).await;

    // The load asks for its files' DEKs one by one, and the tenant loads.
    conn.hold_keys = true;
    let parked = conn
        .request(tenant_request(TENANT, 2, count("docs", None)))
        .await;
    let held = conn.held_key_call().await;
    assert!(
        matches!(held.body, Some(Body::DecryptDataKey(_))),
        "{:?}",
        held.body
    );
    conn.release_held_keys().await;
    conn.answer_key(held).await;
    let Answer::Count(n) = answer(conn.reply(parked).await).unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_request_beyond_max_in_flight_is_answered_busy_at_once() {
    let mut setup = Setup::with(4, |config| config.max_in_flight = 1).await;
    let conn = &mut setup.conn;
    assert_eq!(conn.hello.max_in_flight, 1);
    unload(conn, 2).await;

    // The first request parks: loading the tenant waits for the DEKs (asked for in one call) the
    // coordinator holds back.
    conn.hold_keys = true;
    let parked = conn
        .request(tenant_request(TENANT, 2, count("docs", None)))
        .await;
    let held = conn.held_key_call().await;
    assert!(matches!(held.body, Some(Body::DecryptDataKeys(_))));

    let second = conn
        .call(tenant_request(TENANT, 2, count("docs", None)))
        .await;
    assert_eq!(error_code(&second), Some(ErrorCode::Busy));

    conn.release_held_keys().await;
    conn.answer_key(held).await;
    let Answer::Count(n) = answer(conn.reply(parked).await).unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 4);
    // With the slot free again, the next request runs.
    let Answer::Count(n) = conn.op_for(TENANT, 2, count("docs", None)).await.unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 4);
    setup.stop().await;
}

#[tokio::test]
async fn after_a_dropped_connection_the_worker_reconnects_and_says_hello_again() {
    let Setup {
        coordinator,
        mut conn,
        worker,
        dir,
    } = Setup::new(5).await;
    unload(&mut conn, 2).await;
    // A request in flight when the connection drops: its key call is held, then the line goes dead.
    conn.hold_keys = true;
    conn.request(tenant_request(
        TENANT,
        2,
        upsert("docs", vec![point(6, vec![6.0, 0.0], None)]),
    ))
    .await;
    conn.held_key_call().await;
    drop(conn);

    let mut conn = coordinator.accept().await;
    // Assignments went with the old connection.
    let body = conn
        .call(tenant_request(TENANT, 2, count("docs", None)))
        .await;
    assert_eq!(error_code(&body), Some(ErrorCode::NotAssigned));
    assert_eq!(
        conn.assign(TENANT, 3, no_quota()).await,
        Body::Ack(cluster::Ack::default())
    );
    let Answer::Count(n) = conn.op_for(TENANT, 3, count("docs", None)).await.unwrap() else {
        panic!()
    };
    // The upsert whose key call was cut off never applied.
    assert_eq!(n.count, 5);
    conn.op_for(
        TENANT,
        3,
        upsert("docs", vec![point(6, vec![6.0, 0.0], None)]),
    )
    .await
    .unwrap();
    let Answer::Count(n) = conn.op_for(TENANT, 3, count("docs", None)).await.unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 6);
    worker.stop().await;
    drop(dir);
}

#[tokio::test]
async fn a_refused_upgrade_is_retried() {
    let coordinator = Coordinator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(coordinator.worker_config(dir.path()));
    coordinator.refuse().await;
    coordinator.refuse().await;
    let conn = coordinator.accept().await;
    assert_eq!(conn.hello.worker_id, WORKER);
    worker.stop().await;
}

#[tokio::test]
async fn an_acknowledged_upsert_survives_shutdown_and_a_new_serve() {
    let coordinator = Coordinator::start().await;
    coordinator.ensure_tenant(TENANT);
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(coordinator.worker_config(dir.path()));
    let mut conn = coordinator.accept().await;
    conn.assign(TENANT, 1, no_quota()).await;
    conn.op(create("docs", 3, api::Metric::Cosine))
        .await
        .unwrap();
    let points = (1..=20)
        .map(|i| point(i, vec![1.0, i as f32, 0.5], None))
        .collect();
    conn.op(upsert("docs", points)).await.unwrap();

    // Shutdown: the worker closes the engine and then the WebSocket with a Close frame.
    worker.signal_stop();
    assert!(conn.closed().await, "no Close frame");
    worker.stop().await;

    let worker = Worker::start(coordinator.worker_config(dir.path()));
    let mut conn = coordinator.accept().await;
    conn.assign(TENANT, 1, no_quota()).await;
    assert_eq!(conn.count("docs").await, 20);
    let Answer::Search(result) = conn
        .op(Op::Search(search("docs", vec![1.0, 7.0, 0.5], 1)))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(id_of(&result.points[0].id), 7);
    worker.stop().await;
}

#[tokio::test]
async fn requests_during_shutdown_are_refused_unavailable_while_in_flight_ones_finish() {
    let mut setup = Setup::new(3).await;
    let conn = &mut setup.conn;
    unload(conn, 2).await;
    conn.hold_keys = true;
    let parked = conn
        .request(tenant_request(TENANT, 2, count("docs", None)))
        .await;
    let held = conn.held_key_call().await;

    setup.worker.signal_stop();
    // The worker drains: a request that arrives after the shutdown signal is refused at once,
    // the parked one still finishes.
    let body = conn
        .call(tenant_request(TENANT, 2, count("docs", None)))
        .await;
    assert_eq!(error_code(&body), Some(ErrorCode::Unavailable));
    conn.release_held_keys().await;
    conn.answer_key(held).await;
    let Answer::Count(n) = answer(conn.reply(parked).await).unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 3);
    assert!(conn.closed().await);
    setup.worker.stop().await;
}

#[tokio::test]
async fn over_the_memory_budget_idle_tenants_are_unloaded_and_load_again_on_demand() {
    let mut setup = Setup::with(20, |config| {
        config.memory_budget_bytes = 1;
        config.heartbeat_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let conn = &mut setup.conn;
    // Heartbeats report the accounting; wait for one that shows the tenant unloaded.
    let mut unloaded = false;
    for _ in 0..500 {
        let beat = conn.heartbeat().await;
        if beat.loaded_tenants == 0 && beat.plaintext_bytes == 0 {
            unloaded = true;
            break;
        }
    }
    assert!(
        unloaded,
        "the tenant stayed loaded: {:?}",
        conn.heartbeats.last()
    );
    assert_eq!(conn.count("docs").await, 20);
    setup.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_drops_the_connection_and_the_worker_reconnects() {
    let Setup {
        coordinator,
        mut conn,
        worker,
        dir,
    } = Setup::new(2).await;
    // The frame header alone tells the worker it is too big; it hangs up rather than read it.
    let oversized = vec![0u8; worker::MAX_FRAME_BYTES + 1];
    let _ = conn
        .try_send_raw(tokio_tungstenite::tungstenite::Message::binary(oversized))
        .await;
    assert!(
        !conn.closed().await,
        "the worker hangs up without a Close frame"
    );
    drop(conn);
    let mut conn = coordinator.accept().await;
    conn.assign(TENANT, 1, no_quota()).await;
    assert_eq!(conn.count("docs").await, 2);
    worker.stop().await;
    drop(dir);
}

#[tokio::test]
async fn shutdown_without_a_coordinator_still_returns() {
    let Setup {
        coordinator,
        conn,
        worker,
        dir,
    } = Setup::new(1).await;
    // The coordinator goes silent: the worker is disconnected, reconnecting, when it is stopped.
    drop(conn);
    worker.stop().await;
    drop((coordinator, dir));
}

#[tokio::test]
async fn heartbeats_report_loaded_tenants_plaintext_and_requests_in_flight() {
    let mut setup = Setup::with(20, |config| {
        config.heartbeat_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let conn = &mut setup.conn;
    let mut reported = false;
    for _ in 0..500 {
        let beat = conn.heartbeat().await;
        assert_eq!(beat.in_flight, 0);
        if beat.loaded_tenants == 1 && beat.plaintext_bytes > 0 {
            reported = true;
            break;
        }
    }
    assert!(reported, "last heartbeat: {:?}", conn.heartbeats.last());

    // A request parked on the key service shows as in flight.
    unload(conn, 2).await;
    conn.hold_keys = true;
    let parked = conn
        .request(tenant_request(TENANT, 2, count("docs", None)))
        .await;
    let held = conn.held_key_call().await;
    let mut seen_in_flight = false;
    for _ in 0..500 {
        if conn.heartbeat().await.in_flight == 1 {
            seen_in_flight = true;
            break;
        }
    }
    assert!(seen_in_flight);
    conn.release_held_keys().await;
    conn.answer_key(held).await;
    assert!(answer(conn.reply(parked).await).is_ok());
    setup.stop().await;
}

//! The hub's connection-level behaviour, against fake connections.

use super::*;

fn hub(dir: &std::path::Path) -> Arc<Hub> {
    let audit_key = crate::audit::AuditKey::new(b"audit key for hub tests, 32 b!!!").unwrap();
    let store = Arc::new(Store::open_in_memory(audit_key).unwrap());
    let root = storage::crypto::LocalKeyFile::generate(&dir.join("root.key")).unwrap();
    let keys = Arc::new(LocalKeyService::open(Arc::new(root), &dir.join("keks")).unwrap());
    Arc::new(Hub::new(
        HashMap::new(),
        store,
        keys,
        8,
        HealthConfig::default(),
    ))
}

/// A connection whose frames go to a channel instead of a socket.
fn fake_conn(
    id: &str,
    max_in_flight: usize,
) -> (
    Arc<WorkerConn>,
    tokio::sync::mpsc::UnboundedReceiver<Message>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = futures_util::sink::unfold(tx, |tx, message: Message| async move {
        tx.send(message)
            .map_err(|_| tokio_tungstenite::tungstenite::Error::ConnectionClosed)?;
        Ok(tx)
    });
    let conn = Arc::new(WorkerConn::new(
        id.to_owned(),
        Box::pin(sink),
        storage::gate::IdleGate::open(),
        max_in_flight,
        health::HelloFacts::default(),
        HealthConfig::default(),
    ));
    (conn, rx)
}

fn request_id(message: Message) -> u64 {
    cluster::Envelope::decode(message.into_data().as_ref())
        .unwrap()
        .request_id
}

#[tokio::test]
async fn an_assignment_is_recorded_on_the_connection_that_acknowledged_it() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let (old, mut old_frames) = fake_conn("w", 8);
    hub.workers.write().insert("w".into(), old.clone());
    let assign = tokio::spawn({
        let hub = hub.clone();
        async move {
            let quota = cluster::TenantQuota::default();
            hub.assign("w", "t", 3, quota, Duration::from_secs(60))
                .await
        }
    });
    let id = request_id(old_frames.recv().await.unwrap());
    // The worker reconnects after acknowledging on its old connection, before the
    // acknowledgement is processed.
    let (new, _new_frames) = fake_conn("w", 8);
    hub.workers.write().insert("w".into(), new.clone());
    let waiter = old.pending.lock().remove(&id).unwrap();
    assert!(
        waiter
            .send(Delivery::Body(cluster::envelope::Body::Ack(
                cluster::Ack::default()
            )))
            .is_ok()
    );
    assign.await.unwrap().unwrap();
    assert_eq!(
        new.assigned_epoch("t"),
        None,
        "the new connection was never told about the tenant"
    );
    assert_eq!(old.assigned_epoch("t"), Some(3));
}

/// A large-message pool of one thread, kept busy until the test sends on the channel.
fn busy_pool() -> (Arc<rayon::ThreadPool>, std::sync::mpsc::Sender<()>) {
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap(),
    );
    let (release, held) = std::sync::mpsc::channel::<()>();
    pool.spawn(move || {
        let _ = held.recv();
    });
    (pool, release)
}

/// A request the caller knows to be large is encoded and cut on the large-message pool (at
/// background priority), not on the runtime's thread: while the pool is busy, nothing of it
/// is written.
///
/// On the paused clock, the runtime's time moves on only once no task can run: a request
/// encoded on the runtime is written before the wait below ends, one encoded on the busy
/// pool is not.
#[tokio::test(start_paused = true)]
async fn a_request_known_to_be_large_is_encoded_on_the_large_message_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, release) = busy_pool();
    let hub = hub(dir.path());
    let (conn, mut frames) = fake_conn("w", 8);
    let body = cluster::envelope::Body::Error(cluster::Error {
        code: cluster::ErrorCode::Internal as i32,
        message: "x".repeat(proto::chunk::CHUNK_BYTES * 2),
    });
    let request = {
        let (hub, conn, pool) = (hub.clone(), conn.clone(), pool.clone());
        tokio::spawn(async move {
            hub.request_with(&conn, body, Duration::from_secs(60), 0, Some(&pool))
                .await
        })
    };
    let early = tokio::time::timeout(Duration::from_secs(1), frames.recv()).await;
    assert!(early.is_err(), "written before the pool was free");
    assert_eq!(conn.pending.lock().len(), 1, "the request is registered");
    release.send(()).unwrap();
    // Then it goes, in pieces.
    for _ in 0..3 {
        frames.recv().await.expect("a piece of the request");
    }
    request.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn a_large_answer_reaches_its_waiter_undecoded_and_is_decoded_off_the_task_under_a_reservation()
 {
    let dir = tempfile::tempdir().unwrap();
    let (pool, release) = busy_pool();
    let budget = crate::api::LargeMessages::new(16 << 20);
    let hub = Arc::try_unwrap(hub(dir.path()))
        .ok()
        .unwrap()
        .with_heavy(pool)
        .with_budget(budget.clone());
    let (conn, _frames) = fake_conn("w", 8);
    let envelope = |request_id: u64, len: usize| {
        let body = cluster::envelope::Body::Error(cluster::Error {
            code: cluster::ErrorCode::Internal as i32,
            message: "x".repeat(len),
        });
        tokio_tungstenite::tungstenite::Bytes::from(
            cluster::Envelope {
                request_id,
                deadline_unix_ms: 0,
                body: Some(body),
            }
            .encode_to_vec(),
        )
    };
    let (tx, answer) = tokio::sync::oneshot::channel();
    conn.pending.lock().insert(5, tx);
    let large = crate::api::LARGE_MESSAGE_BYTES + 1;
    // Small frames, and large ones nobody waits for, are decoded by the caller as before.
    assert!(hub.hand_off_large_answer(&conn, envelope(5, 10)).is_some());
    assert!(
        hub.hand_off_large_answer(&conn, envelope(6, large))
            .is_some()
    );
    // The large answer goes to its waiter as it came, at once: the connection's task neither
    // decodes it nor waits for anything.
    assert!(
        hub.hand_off_large_answer(&conn, envelope(5, large))
            .is_none()
    );
    assert!(conn.pending.lock().is_empty());
    let Ok(Delivery::Frame(frame)) = answer.await else {
        panic!("the large answer was not handed over undecoded")
    };
    assert_eq!(
        budget.reserved_bytes(),
        0,
        "nothing is reserved before the waiter"
    );
    // The waiter reserves 4x the frame, then decodes it on the pool, which is busy: until the
    // pool is free the memory is held and nothing is decoded.
    let frame_len = frame.len();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    let decoding = crate::api::collecting_answer(hub.decode_large("w", frame, give_up));
    tokio::pin!(decoding);
    let mut reserved = budget.watch_reserved();
    tokio::select! {
        _ = &mut decoding => panic!("decoded while the pool was busy"),
        seen = reserved.wait_for(|b| *b > 0) => { seen.unwrap(); }
    }
    assert!(budget.reserved_bytes() >= 4 * frame_len);
    release.send(()).unwrap();
    let (decoded, reservation) = decoding.await;
    let Ok(cluster::envelope::Body::Error(err)) = decoded else {
        panic!("not the answer sent")
    };
    assert_eq!(err.message.len(), large);
    // The reservation goes on to the request's task, to render the answer under.
    let reservation = reservation.expect("the reservation was not handed on");
    assert!(budget.reserved_bytes() >= 4 * frame_len);
    drop(reservation);
    assert_eq!(budget.reserved_bytes(), 0);

    // A large frame that does not decode fails its request with an error, and holds nothing.
    let mut garbage = envelope(7, large).to_vec();
    *garbage.last_mut().unwrap() = 0xff; // the message is no longer UTF-8
    let (decoded, reservation) =
        crate::api::collecting_answer(hub.decode_large("w", garbage.into(), give_up)).await;
    let err = decoded.expect_err("garbage decoded");
    // An internal error: its detail is logged, not told to the client.
    assert_eq!(err.code, crate::api::error::Code::Internal);
    assert!(reservation.is_none());
    assert_eq!(budget.reserved_bytes(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_whole_frame_goes_before_the_pieces_of_a_large_one_queued_ahead_of_it() {
    let (conn, mut frames) = fake_conn("w", 8);
    let held = conn.sink.lock().await;
    let large = tokio::spawn({
        let conn = conn.clone();
        async move {
            let body = cluster::envelope::Body::Error(cluster::Error {
                code: 1,
                message: "x".repeat(2 * proto::chunk::CHUNK_BYTES + 1),
            });
            conn.send(
                cluster::Envelope {
                    request_id: 1,
                    deadline_unix_ms: 0,
                    body: Some(body),
                },
                None,
            )
            .await
        }
    });
    tokio::task::yield_now().await; // the large frame's first piece now waits for the socket
    let small = tokio::spawn({
        let conn = conn.clone();
        async move {
            conn.send(
                cluster::Envelope {
                    request_id: 2,
                    deadline_unix_ms: 0,
                    body: Some(cluster::envelope::Body::Ack(cluster::Ack::default())),
                },
                None,
            )
            .await
        }
    });
    tokio::task::yield_now().await; // and the small frame behind it
    drop(held);
    large.await.unwrap().unwrap();
    small.await.unwrap().unwrap();
    let mut order = Vec::new();
    while let Ok(message) = frames.try_recv() {
        let env = cluster::Envelope::decode(message.into_data().as_ref()).unwrap();
        let is_piece = matches!(env.body, Some(cluster::envelope::Body::Chunk(_)));
        order.push((env.request_id, is_piece));
    }
    assert_eq!(order, [(2, false), (1, true), (1, true), (1, true)]);
}

#[test]
fn a_reconciliation_erases_deleted_tenants_and_unloads_those_placed_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let admin = crate::store::Actor("admin".into());
    for worker in ["w", "other"] {
        hub.store.record_worker(worker, "test", 1, 1).unwrap();
    }
    for tenant in ["here", "elsewhere", "nowhere", "erased"] {
        hub.store.create_tenant(&admin, tenant, "free").unwrap();
    }
    hub.store.place(&admin, "here", "w").unwrap();
    hub.store.place(&admin, "elsewhere", "other").unwrap();
    hub.store.place(&admin, "erased", "w").unwrap();
    hub.store.delete_tenant(&admin, "erased").unwrap();
    let held: Vec<String> = ["here", "elsewhere", "nowhere", "erased", "stranger", "../x"]
        .map(String::from)
        .to_vec();
    let plan = hub.plan("w", &held);
    assert_eq!(plan.erase, ["erased"]);
    assert_eq!(plan.unload, ["elsewhere", "nowhere"]);
}

#[tokio::test(start_paused = true)]
async fn a_worker_is_suspect_without_heartbeats_and_up_again_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let (conn, _frames) = fake_conn("w", 8);
    hub.workers.write().insert("w".into(), conn.clone());
    let config = hub.health_config();
    let state = |hub: &Hub| hub.health()[0].state;
    assert_eq!(state(&hub), WorkerState::Up, "fresh from its hello");
    tokio::time::advance(config.suspect_after).await;
    assert_eq!(
        state(&hub),
        WorkerState::Up,
        "exactly suspect_after is still on time"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(state(&hub), WorkerState::Suspect);
    conn.pulse.beat(cluster::Heartbeat {
        loaded_tenants: 3,
        plaintext_bytes: 4096,
        in_flight: 2,
        assigned_tenants: 5,
        rss_bytes: 1 << 20,
        requests_total: 77,
    });
    let report = &hub.health()[0];
    assert_eq!(report.state, WorkerState::Up);
    assert_eq!(report.since_heartbeat, Some(Duration::ZERO));
    assert_eq!(
        (
            report.heartbeat.loaded_tenants,
            report.heartbeat.requests_total
        ),
        (3, 77)
    );
    // A suspect worker takes no new tenant while another is up.
    tokio::time::advance(config.suspect_after + Duration::from_millis(1)).await;
    let (other, _other_frames) = fake_conn("x", 8);
    hub.workers.write().insert("x".into(), other.clone());
    let chosen = health::choose_worker(&hub.health(), |id| if id == "x" { 100 } else { 0 });
    assert_eq!(chosen.as_deref(), Some("x"));
}

#[test]
fn a_refusal_of_an_older_request_keeps_a_newer_assignment() {
    let (conn, _frames) = fake_conn("w", 8);
    conn.record_assignment("t", 5);
    // A request sent under epoch 4, before the assignment at 5, is refused after it.
    conn.forget_assignment_up_to("t", 4);
    assert_eq!(conn.assigned_epoch("t"), Some(5));
    // A refusal of a request sent under the epoch held proves the assignment gone.
    conn.forget_assignment_up_to("t", 5);
    assert_eq!(conn.assigned_epoch("t"), None);
    conn.record_assignment("t", 6);
    conn.forget_assignment_up_to("t", 7);
    assert_eq!(conn.assigned_epoch("t"), None);
    // An acknowledgement recorded late never replaces a newer one.
    conn.record_assignment("t", 8);
    conn.record_assignment("t", 7);
    assert_eq!(conn.assigned_epoch("t"), Some(8));
    conn.forget_assignment_up_to("t", 8);
    // Another tenant's refusal touches nothing else.
    conn.record_assignment("u", 2);
    conn.forget_assignment_up_to("t", 9);
    assert_eq!(conn.assigned_epoch("u"), Some(2));
}

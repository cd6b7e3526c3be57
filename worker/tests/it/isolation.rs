use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use prost::Message as _;
use proto::vaultvec::cluster::v1 as cluster;
use proto::vaultvec::v1 as api;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::fake::*;

const OTHER: &str = "globex";

/// Holds the requests a test picks on their worker thread until it opens, and reports each one
/// that reached it.
#[derive(Clone)]
struct Gate {
    is_open: Arc<(Mutex<bool>, Condvar)>,
    entered: mpsc::UnboundedSender<(String, String)>,
}

impl Gate {
    fn new() -> (Gate, mpsc::UnboundedReceiver<(String, String)>) {
        let (entered, rx) = mpsc::unbounded_channel();
        let gate = Gate {
            is_open: Arc::new((Mutex::new(false), Condvar::new())),
            entered,
        };
        (gate, rx)
    }

    /// A hook that holds `tenant`'s `op` requests at the gate.
    fn hook(&self, tenant: &'static str, op: &'static str) -> worker::RequestHook {
        let gate = self.clone();
        Arc::new(move |t: &str, o: &str| {
            if t != tenant || o != op {
                return;
            }
            let _ = gate.entered.send((t.to_owned(), o.to_owned()));
            let (lock, cvar) = &*gate.is_open;
            let mut is_open = lock.lock();
            while !*is_open {
                cvar.wait(&mut is_open);
            }
        })
    }

    fn open(&self) {
        let (lock, cvar) = &*self.is_open;
        *lock.lock() = true;
        cvar.notify_all();
    }
}

/// Opens the gate when the test ends, also by a failed assertion, so a held thread never keeps
/// the runtime from shutting down.
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Assigns [`OTHER`] with a 2-d collection `docs` holding one point.
async fn other_tenant(setup: &mut Setup) {
    setup.coordinator.ensure_tenant(OTHER);
    let conn = &mut setup.conn;
    assert_eq!(
        conn.assign(OTHER, 1, no_quota()).await,
        Body::Ack(cluster::Ack::default())
    );
    conn.op_for(OTHER, 1, create("docs", 2, api::Metric::L2))
        .await
        .unwrap();
    conn.op_for(
        OTHER,
        1,
        upsert("docs", vec![point(7, vec![7.0, 0.0], None)]),
    )
    .await
    .unwrap();
}

// Multi-threaded: on a worker that ran the search on its connection's thread, the held search
// would otherwise hold the test's only thread too, and the test could not even fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_search_stops_neither_heartbeats_nor_other_tenants() {
    let (gate, mut entered) = Gate::new();
    let hook = gate.hook(TENANT, "search");
    let _open = OpenOnDrop(gate.clone());
    let mut setup = Setup::with(4, |config| config.request_hook = Some(hook)).await;
    other_tenant(&mut setup).await;
    let conn = &mut setup.conn;
    // The tenant's collection is in memory (it was just written), so this is the cheap path a
    // worker could be tempted to answer inline.
    let held = conn
        .request(tenant_request(
            TENANT,
            1,
            Op::Search(search("docs", vec![1.0, 0.0], 2)),
        ))
        .await;
    assert_eq!(
        entered.recv().await.unwrap(),
        (TENANT.to_owned(), "search".to_owned())
    );

    // While it is held: heartbeats go on, and the other tenant is answered.
    conn.heartbeat().await;
    conn.heartbeat().await;
    let Answer::Search(found) = conn
        .op_for(OTHER, 1, Op::Search(search("docs", vec![7.0, 0.0], 1)))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(id_of(&found.points[0].id), 7);
    let Answer::Count(n) = conn.op_for(OTHER, 1, count("docs", None)).await.unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 1);

    gate.open();
    let Answer::Search(found) = answer(conn.reply(held).await).unwrap() else {
        panic!()
    };
    let ids: Vec<u64> = found.points.iter().map(|p| id_of(&p.id)).collect();
    assert_eq!(ids, vec![1, 2]);
    setup.stop().await;
}

/// A tenant runs at most `max_running_per_tenant` requests at once; the rest of its admitted
/// requests wait for their turn without a thread, and another tenant's request runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_runs_at_most_its_running_limit_and_the_rest_wait_their_turn() {
    let (gate, mut entered) = Gate::new();
    let hook = gate.hook(TENANT, "count");
    let _open = OpenOnDrop(gate.clone());
    let mut setup = Setup::with(4, |config| {
        config.max_in_flight = 16;
        config.max_running_per_tenant = 1;
        config.request_hook = Some(hook);
    })
    .await;
    other_tenant(&mut setup).await;
    let conn = &mut setup.conn;
    let bodies = (0..3)
        .map(|_| tenant_request(TENANT, 1, count("docs", None)))
        .collect();
    let ids = conn.request_burst(bodies).await;
    entered.recv().await.unwrap();
    // The other tenant is answered while the first request is held and two wait behind it.
    let Answer::Count(n) = conn.op_for(OTHER, 1, count("docs", None)).await.unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 1);
    conn.heartbeat().await;
    let mut running_while_held = 1;
    while entered.try_recv().is_ok() {
        running_while_held += 1;
    }
    assert_eq!(running_while_held, 1, "requests beyond the limit ran");

    gate.open();
    for id in ids {
        let Answer::Count(n) = answer(conn.reply(id).await).unwrap() else {
            panic!()
        };
        assert_eq!(n.count, 4);
    }
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_a_request_running_runs_the_next_in_the_idle_class_and_others_do_not() {
    let (gate, mut entered) = Gate::new();
    let gated = gate.hook(TENANT, "count");
    // Reports whether each count runs on a SCHED_IDLE thread, then holds the tenant's counts.
    let (nice_tx, mut nices) = mpsc::unbounded_channel();
    let hook: worker::RequestHook = Arc::new(move |t: &str, o: &str| {
        if o == "count" {
            let idle = storage::process::this_thread_is_idle_class().unwrap();
            let _ = nice_tx.send((t.to_owned(), idle));
        }
        gated(t, o);
    });
    let _open = OpenOnDrop(gate.clone());
    let mut setup = Setup::with(4, |config| {
        config.max_running_per_tenant = 2;
        config.request_hook = Some(hook);
    })
    .await;
    other_tenant(&mut setup).await;
    let (base, background) = (false, true);
    let conn = &mut setup.conn;
    let first = conn
        .request_burst(vec![tenant_request(TENANT, 1, count("docs", None))])
        .await;
    entered.recv().await.unwrap();
    assert_eq!(nices.recv().await.unwrap(), (TENANT.to_owned(), base));
    // Its second request runs while the first does: in the idle class.
    let second = conn
        .request_burst(vec![tenant_request(TENANT, 1, count("docs", None))])
        .await;
    entered.recv().await.unwrap();
    assert_eq!(nices.recv().await.unwrap(), (TENANT.to_owned(), background));
    // Another tenant's request meanwhile runs in the normal class.
    let Answer::Count(n) = conn.op_for(OTHER, 1, count("docs", None)).await.unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 1);
    assert_eq!(nices.recv().await.unwrap(), (OTHER.to_owned(), base));

    gate.open();
    for id in first.into_iter().chain(second) {
        let Answer::Count(n) = answer(conn.reply(id).await).unwrap() else {
            panic!()
        };
        assert_eq!(n.count, 4);
    }
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_is_decoded_on_its_own_thread_while_other_tenants_are_served() {
    let (gate, mut entered) = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let mut setup = Setup::with(4, |config| {
        config.request_hook = Some(gate.hook(TENANT, "decode"))
    })
    .await;
    other_tenant(&mut setup).await;
    let conn = &mut setup.conn;
    // About 120 KiB: decoded off the loop, where the test holds it before it decodes.
    let text = "x".repeat(3_000);
    let points: Vec<_> = (100..140)
        .map(|i| {
            point(
                i,
                vec![i as f32, 1.0],
                Some(serde_json::json!({ "text": text })),
            )
        })
        .collect();
    let large = tenant_request(TENANT, 1, upsert("docs", points.clone()));
    let ids = conn.request_burst(vec![large]).await;
    tokio::time::timeout(PATIENCE, entered.recv())
        .await
        .expect("the large request was not decoded on its own thread")
        .unwrap();
    // The loop goes on: another tenant is answered and heartbeats keep coming.
    let Answer::Count(n) = conn.op_for(OTHER, 1, count("docs", None)).await.unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 1);
    conn.heartbeat().await;
    gate.open();
    answer(conn.reply(ids[0]).await).unwrap();
    assert_eq!(conn.count("docs").await, 4 + 40);

    // A large frame whose operation does not decode fails that request alone.
    let bad = tenant_request(TENANT, 1, upsert("docs", points));
    let mut frame = cluster::Envelope {
        request_id: 1_000,
        deadline_unix_ms: 0,
        body: Some(bad),
    }
    .encode_to_vec();
    // The last point's payload text ends the frame; it is no longer UTF-8.
    let at = frame.len() - 1;
    frame[at] = 0xff;
    conn.send_raw(tokio_tungstenite::tungstenite::Message::binary(frame))
        .await;
    let body = conn.reply(1_000).await;
    assert_eq!(
        error_code(&body),
        Some(ErrorCode::InvalidArgument),
        "{body:?}"
    );
    assert_eq!(conn.count("docs").await, 4 + 40);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_whose_deadline_passes_while_it_runs_deletes_nothing() {
    let deadline = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let hook_deadline = deadline.clone();
    // Holds the delete on its worker thread until its deadline has passed.
    let hook: worker::RequestHook = Arc::new(move |_: &str, op: &str| {
        if op != "delete" {
            return;
        }
        let until = hook_deadline.load(std::sync::atomic::Ordering::SeqCst);
        while now_ms() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    });
    let mut setup = Setup::with(4, |config| config.request_hook = Some(hook)).await;
    let conn = &mut setup.conn;
    let at = now_ms() + 2_000;
    deadline.store(at, std::sync::atomic::Ordering::SeqCst);
    let delete = Op::Delete(api::DeletePointsRequest {
        collection: "docs".into(),
        ids: Vec::new(),
        filter: filter(serde_json::json!({"must": [{"key": "even", "match": {"value": true}}]})),
        idempotency_key: String::new(),
    });
    conn.send(99, at, tenant_request(TENANT, 1, delete)).await;
    let body = conn.reply(99).await;
    assert_eq!(error_code(&body), Some(ErrorCode::DeadlineExceeded));
    // The delete stopped: nothing was removed behind the error.
    assert_eq!(conn.count("docs").await, 4);
    setup.stop().await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Points 1..=100 of a 2-d collection `big`, each with an 8 KiB string payload.
async fn big_payloads(conn: &mut Conn) {
    conn.op(create("big", 2, api::Metric::L2)).await.unwrap();
    for chunk in (1..=100u64).collect::<Vec<_>>().chunks(50) {
        let points = chunk
            .iter()
            .map(|&i| {
                point(
                    i,
                    vec![i as f32, 0.0],
                    Some(serde_json::json!({"text": "x".repeat(8 << 10)})),
                )
            })
            .collect();
        conn.op(upsert("big", points)).await.unwrap();
    }
}

/// 100 searches of top_k 100 with payloads: 10,000 records of 8 KiB, about 80 MiB.
fn huge_batch() -> Op {
    let searches = (0..100)
        .map(|_| api::SearchRequest {
            with_payload: true,
            ..search("big", vec![0.0, 0.0], 100)
        })
        .collect();
    Op::SearchBatch(api::SearchBatchRequest {
        collection: "big".into(),
        searches,
    })
}

#[tokio::test]
async fn get_answers_a_repeated_id_once() {
    let mut setup = Setup::new(3).await;
    let conn = &mut setup.conn;
    let get = Op::Get(api::GetPointsRequest {
        collection: "docs".into(),
        ids: vec![num_id(2); 50],
        with_payload: true,
        with_vector: true,
    });
    let Answer::Get(got) = conn.op(get).await.unwrap() else {
        panic!()
    };
    let ids: Vec<u64> = got.points.iter().map(|p| id_of(&p.id)).collect();
    assert_eq!(ids, vec![2]);
    setup.stop().await;
}

#[tokio::test]
async fn a_batch_search_over_the_answer_bound_is_refused_and_the_connection_stays() {
    let mut setup = Setup::new(0).await;
    let conn = &mut setup.conn;
    big_payloads(conn).await;
    let message = conn.refused(huge_batch(), ErrorCode::InvalidArgument).await;
    assert!(message.contains("answer too large"), "{message}");
    assert!(message.contains(&(16 << 20).to_string()), "{message}");
    // The same connection keeps serving.
    assert_eq!(conn.count("big").await, 100);
    setup.stop().await;
}

#[tokio::test]
async fn an_answer_too_large_for_a_frame_fails_that_request_only() {
    // With the engine's bound lifted, the answer is built, and only the frame check stands
    // between it and a coordinator that would drop the whole connection.
    let mut setup = Setup::with(0, |config| config.limits.max_answer_bytes = usize::MAX).await;
    let conn = &mut setup.conn;
    big_payloads(conn).await;
    let message = conn.refused(huge_batch(), ErrorCode::InvalidArgument).await;
    assert!(message.contains("answer too large"), "{message}");
    assert!(
        message.contains("a frame to the coordinator may carry"),
        "{message}"
    );
    assert_eq!(conn.count("big").await, 100);
    setup.stop().await;
}

#[tokio::test]
async fn a_scroll_page_ends_at_the_answer_bound_with_a_cursor() {
    let mut setup = Setup::with(0, |config| config.limits.max_answer_bytes = 100_000).await;
    let conn = &mut setup.conn;
    big_payloads(conn).await;
    let mut cursor = String::new();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let scroll = Op::Scroll(api::ScrollRequest {
            collection: "big".into(),
            limit: 50,
            cursor: cursor.clone(),
            with_payload: true,
            ..Default::default()
        });
        let Answer::Scroll(page) = conn.op(scroll).await.unwrap() else {
            panic!()
        };
        let bytes: usize = page.points.iter().map(|p| p.encoded_len()).sum();
        assert!(bytes <= 100_000, "a page of {bytes} bytes");
        seen.extend(page.points.iter().map(|p| id_of(&p.id)));
        pages += 1;
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert!(pages >= 9, "{pages} pages");
    assert_eq!(seen, (1..=100).collect::<Vec<_>>());
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_holding_its_share_leaves_slots_for_the_others() {
    let (gate, mut entered) = Gate::new();
    let hook = gate.hook(TENANT, "count");
    let _open = OpenOnDrop(gate.clone());
    let mut setup = Setup::with(4, |config| {
        config.max_in_flight = 4;
        config.request_hook = Some(hook);
    })
    .await;
    other_tenant(&mut setup).await;
    let conn = &mut setup.conn;
    // The tenant asks for every slot of the worker; its share alone is half of them.
    let bodies = (0..4)
        .map(|_| tenant_request(TENANT, 1, count("docs", None)))
        .collect();
    let ids = conn.request_burst(bodies).await;
    for _ in 0..2 {
        entered.recv().await.unwrap();
    }
    // While its requests are held, the other tenant is served, not told the worker is busy.
    let Answer::Count(n) = conn.op_for(OTHER, 1, count("docs", None)).await.unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 1);

    gate.open();
    let mut busy = 0;
    for id in ids {
        match answer(conn.reply(id).await) {
            Ok(Answer::Count(n)) => assert_eq!(n.count, 4),
            Err(err) => {
                assert_eq!(err.code(), ErrorCode::Busy, "{}", err.message);
                busy += 1;
            }
            Ok(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(busy, 2);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_travel_in_pieces_both_ways_with_other_frames_between() {
    let mut setup = Setup::with(4, |_| {}).await;
    other_tenant(&mut setup).await;
    let conn = &mut setup.conn;
    let text = "y".repeat(6_000);
    let points: Vec<_> = (100..150)
        .map(|i| {
            point(
                i,
                vec![i as f32, 1.0],
                Some(serde_json::json!({ "text": text })),
            )
        })
        .collect();
    // An upsert of about 300 KiB, sent in pieces with another tenant's request after the first.
    let upsert_id = 5_000;
    let frame = cluster::Envelope {
        request_id: upsert_id,
        deadline_unix_ms: 0,
        body: Some(tenant_request(TENANT, 1, upsert("docs", points))),
    }
    .encode_to_vec();
    let pieces = proto::chunk::split(upsert_id, frame);
    assert!(pieces.len() >= 2, "{} pieces", pieces.len());
    conn.send_raw(Message::binary(pieces[0].clone())).await;
    let Answer::Count(n) = conn.op_for(OTHER, 1, count("docs", None)).await.unwrap() else {
        panic!()
    };
    assert_eq!(n.count, 1);
    for piece in &pieces[1..] {
        conn.send_raw(Message::binary(piece.clone())).await;
    }
    let Answer::Upsert(done) = answer(conn.reply(upsert_id).await).unwrap() else {
        panic!()
    };
    assert_eq!(done.upserted, 50);
    assert_eq!(conn.count("docs").await, 4 + 50);

    // Their answer to a get of them all, about 300 KiB, comes back in pieces.
    let get = tenant_request(
        TENANT,
        1,
        Op::Get(api::GetPointsRequest {
            collection: "docs".into(),
            ids: (100..150).map(num_id).collect(),
            with_payload: true,
            with_vector: false,
        }),
    );
    let id = conn.request(get).await;
    let Answer::Get(got) = answer(conn.reply(id).await).unwrap() else {
        panic!()
    };
    assert_eq!(got.points.len(), 50);
    assert!(
        conn.pieces.get(&id).copied().unwrap_or(0) >= 2,
        "{:?}",
        conn.pieces
    );

    // A request whose pieces pass the frame limit fails alone, at the piece that passes it.
    let piece = |last: bool| {
        Message::binary(
            cluster::Envelope {
                request_id: 6_000,
                deadline_unix_ms: 0,
                body: Some(Body::Chunk(cluster::Chunk {
                    data: vec![0; proto::chunk::CHUNK_BYTES].into(),
                    last,
                })),
            }
            .encode_to_vec(),
        )
    };
    for _ in 0..(worker::MAX_FRAME_BYTES / proto::chunk::CHUNK_BYTES + 1) {
        conn.send_raw(piece(false)).await;
    }
    conn.send_raw(piece(true)).await;
    let body = conn.reply(6_000).await;
    assert_eq!(
        error_code(&body),
        Some(ErrorCode::InvalidArgument),
        "{body:?}"
    );
    assert_eq!(conn.count("docs").await, 4 + 50);
    setup.stop().await;
}

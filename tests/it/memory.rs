//! The coordinator's memory for large messages: one configured budget bounds what request bodies
//! and answers over 64 KiB hold at once (`api::budget`).

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use coordinator::config::Config;

fn small_budget(config: &mut Config) {
    config.large_message_budget_bytes = 1 << 20;
    config.request_timeout = Duration::from_secs(2);
}

/// The message of an error answer.
fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

/// `ids` as points with a payload text of `text` bytes each.
fn points(ids: std::ops::Range<u64>, text: usize) -> Value {
    let points: Vec<Value> = ids
        .map(|i| json!({"id": i, "vector": [i as f32, 1.0], "payload": {"t": "x".repeat(text)}}))
        .collect();
    json!({ "points": points })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_and_answers_take_their_memory_from_one_budget() {
    let mut cluster = tests::Cluster::start_without_workers(1, small_budget).await;
    cluster.start_worker(0).await;
    let key = cluster.tenant("budget", None).await;
    cluster.create_collection(&key, "c", 2).await;
    let upsert = "/v1/collections/c/points";

    // A body that would take more than the whole budget (4 x its 300 KB) is refused unread.
    let (s, v) = cluster
        .http("PUT", upsert, Some(&key), Some(points(0..100, 3_000)))
        .await;
    assert_eq!(s, 413, "{v}");
    assert!(message(&v).contains("larger than this server holds"), "{v}");

    // A body of 150 KB holds 600 KB of the budget from before it is read: while one is held half
    // sent, another does not fit beside it and gives up at the request timeout.
    let held = serde_json::to_vec(&points(100..150, 3_000)).unwrap();
    let mut first = tokio::net::TcpStream::connect(cluster.http).await.unwrap();
    let head = format!(
        "PUT {upsert} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        held.len()
    );
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&held[..held.len() / 2]).await.unwrap();
    // The second waits its turn behind the first, which holds its reservation until answered.
    let mut reserved = cluster.service().watch_large_reserved();
    tokio::time::timeout(Duration::from_secs(60), reserved.wait_for(|b| *b > 0))
        .await
        .expect("the held body reserved nothing")
        .unwrap();
    let (s, v) = cluster
        .http("PUT", upsert, Some(&key), Some(points(150..200, 3_000)))
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(
        message(&v).contains("busy with other large messages"),
        "{v}"
    );
    first.write_all(&held[held.len() / 2..]).await.unwrap();
    let mut answer = Vec::new();
    first.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(cluster.service().large_reserved_bytes(), 0);
    let (s, v) = cluster
        .http("PUT", upsert, Some(&key), Some(points(150..200, 3_000)))
        .await;
    assert_eq!(s, 200, "{v}");

    // An answer of about 300 KB would take more than the budget too: refused with the reason.
    let get = |ids: std::ops::Range<u64>| {
        let ids: Vec<u64> = ids.collect();
        let body = json!({"ids": ids, "with_payload": true});
        cluster.http(
            "POST",
            "/v1/collections/c/points/get",
            Some(&key),
            Some(body),
        )
    };
    let (s, v) = get(100..200).await;
    assert_eq!(s, 413, "{v}");
    assert!(message(&v).contains("answer"), "{v}");
    // One of half the points fits, and comes back whole.
    let (s, v) = get(100..150).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["points"].as_array().map(Vec::len), Some(50));
    assert_eq!(cluster.service().large_reserved_bytes(), 0);
    cluster.shutdown().await;
}

/// Sends `body` to `path` in HTTP/1.1 chunks (no Content-Length); answers the raw response.
async fn send_chunked(cluster: &tests::Cluster, path: &str, key: &str, body: &[u8]) -> String {
    let mut conn = tokio::net::TcpStream::connect(cluster.http).await.unwrap();
    let mut request = format!(
        "PUT {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for piece in body.chunks(16 << 10) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // One write of all of it: a server that refuses the body part way cannot fail the test's
    // write, and what it answered is read until it closes (or resets) the connection.
    let _ = conn.write_all(&request).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A body sent in chunks declares no length, so nothing can be reserved for it before it is
/// read: up to 64 KiB it is taken as usual, past that it is refused, and it never holds the
/// budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_is_taken_up_to_64_kib_and_refused_past_that() {
    let cluster = tests::Cluster::start(1).await;
    let key = cluster.tenant("chunks", None).await;
    cluster.create_collection(&key, "c", 2).await;
    let small = serde_json::to_vec(&points(0..5, 1_000)).unwrap();
    let answer = send_chunked(&cluster, "/v1/collections/c/points", &key, &small).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let large = serde_json::to_vec(&points(5..30, 3_000)).unwrap();
    assert!(large.len() > 64 << 10);
    let answer = send_chunked(&cluster, "/v1/collections/c/points", &key, &large).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("must declare its length"), "{answer}");
    assert_eq!(cluster.service().large_reserved_bytes(), 0);
    cluster.shutdown().await;
}

/// The pieces of large messages are read and written only as the gates let them through
/// (`storage::gate`): the coordinator's for a large body and each 64 KiB of a large answer, the
/// worker's for each piece (`proto::chunk::CHUNK_BYTES`) of a large answer frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_of_large_bodies_and_answers_pass_the_idle_gates() {
    let cluster = tests::Cluster::start(1).await;
    let key = cluster.tenant("gated", None).await;
    cluster.create_collection(&key, "c", 2).await;
    let coordinator_passes = || storage::gate::passes_by_name(coordinator::GATE_THREAD);
    let worker_passes = || storage::gate::passes_by_name(worker::GATE_THREAD);

    let (before, worker_before) = (coordinator_passes(), worker_passes());
    let body = points(0..100, 8_000);
    let (s, v) = cluster
        .http("PUT", "/v1/collections/c/points", Some(&key), Some(body))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        coordinator_passes() > before,
        "an 800 KB body was read without passing the coordinator's gate"
    );
    assert_eq!(
        worker_passes(),
        worker_before,
        "the worker sent no large answer"
    );

    let (before, worker_before) = (coordinator_passes(), worker_passes());
    let ids: Vec<u64> = (0..100).collect();
    let (s, v) = cluster
        .http(
            "POST",
            "/v1/collections/c/points/get",
            Some(&key),
            Some(json!({"ids": ids, "with_payload": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["points"].as_array().map(Vec::len), Some(100));
    let answer_len = serde_json::to_vec(&v).unwrap().len() as u64;
    // At least one pass per full 64 KiB piece of the HTTP answer ...
    assert!(
        coordinator_passes() - before >= answer_len / (64 << 10),
        "{} passes for an answer of {answer_len} bytes",
        coordinator_passes() - before
    );
    // ... and per piece of the worker's answer frame (800 KB of payloads).
    assert!(
        worker_passes() - worker_before >= (800_000 / proto::chunk::CHUNK_BYTES) as u64,
        "{} worker passes for an answer frame of over 800 KB",
        worker_passes() - worker_before
    );
    cluster.shutdown().await;
}

/// A gRPC call to `path` over raw HTTP/2 whose message declares `declared` bytes and of which
/// only the 5-byte prefix and `sent` bytes are sent; answers the open stream (to send the rest
/// on, or not) and the answer to come. The connection's task runs until the test ends.
async fn grpc_call_declaring(
    cluster: &tests::Cluster,
    key: &str,
    path: &str,
    declared: u32,
    sent: usize,
) -> (
    h2::SendStream<prost::bytes::Bytes>,
    h2::client::ResponseFuture,
) {
    use tonic::codegen::http;
    let tcp = tokio::net::TcpStream::connect(cluster.grpc).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{}{path}", cluster.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {key}"))
        .body(())
        .unwrap();
    let (answer, mut stream) = client.send_request(request, false).unwrap();
    let mut message = vec![0u8];
    message.extend_from_slice(&declared.to_be_bytes());
    message.resize(5 + sent, 0);
    stream
        .send_data(prost::bytes::Bytes::from(message), false)
        .unwrap();
    (stream, answer)
}

/// The grpc-status and grpc-message of an answer that carries them in its headers (a call
/// refused before its handler ran).
fn grpc_status(answer: &tonic::codegen::http::Response<h2::RecvStream>) -> (String, String) {
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    (
        header("grpc-status"),
        percent_decoded(&header("grpc-message")),
    )
}

/// A `grpc-message` header's text (percent-encoded on the wire).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A gRPC message's declared length is checked against the tenant's tier and the large-message
/// budget before tonic reads a byte of it: over the tier's limit it is refused unread (before,
/// tonic read and decoded up to 64 MiB first); over 64 KiB it reserves 4x its size first and
/// holds it until answered, so a second one waits and gives up, as HTTP bodies do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_are_checked_and_reserved_from_their_declared_length() {
    let mut cluster = tests::Cluster::start_without_workers(1, small_budget).await;
    cluster.start_worker(0).await;
    let free = cluster.tenant("grpc-free", Some("free")).await;
    let pro = cluster.tenant("grpc-pro", None).await;
    cluster.create_collection(&pro, "c", 2).await;
    let upsert = "/vaultvec.v1.Points/Upsert";
    // Within its 30 s wait for the message, the server answers at once: the message never comes.
    let refused_unread = |answer: h2::client::ResponseFuture| async move {
        tokio::time::timeout(Duration::from_secs(20), answer)
            .await
            .expect("the server waited for a message over the limit")
            .unwrap()
    };

    // Tier `free` takes 256 KiB: a message declaring 1 MiB is refused from its prefix.
    let (_stream, answer) = grpc_call_declaring(&cluster, &free, upsert, 1 << 20, 100).await;
    let (status, message) = grpc_status(&refused_unread(answer).await);
    assert_eq!(status, "8", "{message}"); // RESOURCE_EXHAUSTED
    assert!(message.contains("over the tier's limit"), "{message}");

    // One that would take more than the whole budget (4 x 300 KB) is refused from its prefix.
    let (_stream, answer) = grpc_call_declaring(&cluster, &pro, upsert, 300_000, 100).await;
    let (status, message) = grpc_status(&refused_unread(answer).await);
    assert_eq!(status, "8", "{message}");
    assert!(
        message.contains("larger than this server holds"),
        "{message}"
    );

    // 150 KB holds 600 KB of the budget before it is read; a second does not fit beside it.
    let (mut held, held_answer) = grpc_call_declaring(&cluster, &pro, upsert, 150_000, 0).await;
    let mut reserved = cluster.service().watch_large_reserved();
    tokio::time::timeout(Duration::from_secs(60), reserved.wait_for(|b| *b > 0))
        .await
        .expect("the held message reserved nothing")
        .unwrap();
    let (_stream, answer) = grpc_call_declaring(&cluster, &pro, upsert, 150_000, 0).await;
    let (status, message) = grpc_status(&answer.await.unwrap());
    assert_eq!(status, "14", "{message}"); // UNAVAILABLE
    assert!(
        message.contains("busy with other large messages"),
        "{message}"
    );
    // The held one, sent in full (garbage as an upsert), is answered and gives its share back.
    held.send_data(prost::bytes::Bytes::from(vec![0u8; 150_000]), true)
        .unwrap();
    let answer = held_answer.await.unwrap();
    let mut body = answer.into_body();
    while body.data().await.is_some() {}
    let _ = body.trailers().await;
    tokio::time::timeout(Duration::from_secs(60), reserved.wait_for(|b| *b == 0))
        .await
        .expect("the reservation was not given back")
        .unwrap();
    cluster.shutdown().await;
}

/// A large gRPC answer reserves its share of the budget until it has been sent: one larger than
/// the budget holds is refused with the reason, a smaller one comes back whole and gives its
/// share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_answers_reserve_from_the_budget_until_sent() {
    use proto::vaultvec::v1 as api;
    let mut cluster = tests::Cluster::start_without_workers(1, small_budget).await;
    cluster.start_worker(0).await;
    let key = cluster.tenant("grpc-answers", None).await;
    cluster.create_collection(&key, "c", 2).await;
    for range in [0..50, 50..100] {
        let (s, v) = cluster
            .http(
                "PUT",
                "/v1/collections/c/points",
                Some(&key),
                Some(points(range, 3_000)),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let mut client = api::points_client::PointsClient::new(cluster.grpc_channel().await)
        .max_decoding_message_size(64 << 20);
    let get = |ids: std::ops::Range<u64>| {
        let mut request = tonic::Request::new(api::GetPointsRequest {
            collection: "c".into(),
            ids: ids
                .map(|i| api::PointId {
                    kind: Some(api::point_id::Kind::Num(i)),
                })
                .collect(),
            with_payload: true,
            with_vector: false,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    };
    // About 300 KB of payloads: 4x that is more than the 1 MiB budget.
    let status = client.get(get(0..100)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("answer"), "{status:?}");
    // Half of them fit, and come back whole.
    let got = client.get(get(0..50)).await.unwrap().into_inner();
    assert_eq!(got.points.len(), 50);
    let mut reserved = cluster.service().watch_large_reserved();
    tokio::time::timeout(Duration::from_secs(60), reserved.wait_for(|b| *b == 0))
        .await
        .expect("the answer's reservation was not given back")
        .unwrap();
    cluster.shutdown().await;
}

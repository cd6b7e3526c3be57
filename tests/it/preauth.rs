//! What a client without a valid key can make the coordinator do: its failed authentications are
//! budgeted per (forwarded) address and audited as counted rows, and nothing of its request body
//! is read or decoded before the key is checked (INV-11, INV-13, INV-22).

use proto::vaultvec::v1 as api;
use proto::vaultvec::v1::points_client::PointsClient;
use serde_json::Value;
use tests::{ADMIN_TOKEN, Cluster, with_key};

/// Sends a request with a wrong key over HTTP, as from behind a proxy that set `X-Forwarded-For`.
async fn wrong_key_via(cluster: &Cluster, forwarded_for: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new()
        .get(cluster.url("/v1/collections"))
        .bearer_auth("vv_AAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB");
    if let Some(value) = forwarded_for {
        request = request.header("x-forwarded-for", value);
    }
    request
        .send()
        .await
        .expect("http request")
        .status()
        .as_u16()
}

/// Behind a proxy listed in `trusted_proxies`, failed authentications count against the address in
/// `X-Forwarded-For` (over HTTP, gRPC and the admin API), so one client's failures do not throttle
/// the others; from any other peer the header changes nothing (INV-11, INV-13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_count_against_the_forwarded_address_only_behind_a_trusted_proxy() {
    // The test client connects from 127.0.0.1, which plays the proxy. Three failures per address,
    // no refill to speak of.
    let cluster = Cluster::start_without_workers(1, |config| {
        config.auth_failures.burst = 3;
        config.auth_failures.per_second = 0.001;
        config.auth_failures.trusted_proxies = vec![[127, 0, 0, 1].into()];
    })
    .await;
    for _ in 0..3 {
        assert_eq!(wrong_key_via(&cluster, Some("203.0.113.7")).await, 401);
    }
    assert_eq!(wrong_key_via(&cluster, Some("203.0.113.7")).await, 429);
    // Another client behind the same proxy has its own budget.
    assert_eq!(wrong_key_via(&cluster, Some("203.0.113.8")).await, 401);
    // The proxy appends the address it saw: what a client wrote itself sits to its left.
    assert_eq!(
        wrong_key_via(&cluster, Some("203.0.113.8, 203.0.113.9")).await,
        401
    );
    // Without the header the proxy's own address counts.
    assert_eq!(wrong_key_via(&cluster, None).await, 401);
    // The admin API draws on the same per-address budget (203.0.113.8 has failed once).
    let admin = |token: &'static str| {
        reqwest::Client::new()
            .get(cluster.url("/admin/v1/tenants"))
            .bearer_auth(token)
            .header("x-forwarded-for", "203.0.113.8")
    };
    for _ in 0..2 {
        assert_eq!(admin("wrong").send().await.unwrap().status().as_u16(), 401);
    }
    assert_eq!(admin("wrong").send().await.unwrap().status().as_u16(), 429);
    // A valid admin token is never refused because others failed from the same address: the
    // operator cannot be locked out of the admin API by a flood.
    assert_eq!(
        admin(ADMIN_TOKEN).send().await.unwrap().status().as_u16(),
        200
    );
    assert_eq!(admin("wrong").send().await.unwrap().status().as_u16(), 429);
    // gRPC reads the same header from the metadata.
    let mut points = PointsClient::new(cluster.grpc_channel().await);
    let count = |forwarded_for: &'static str| {
        let mut request = with_key(
            api::CountRequest {
                collection: "c".into(),
                filter: None,
            },
            "vv_AAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
        );
        request
            .metadata_mut()
            .insert("x-forwarded-for", forwarded_for.parse().unwrap());
        request
    };
    let status = points.count(count("203.0.113.7")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let status = points.count(count("203.0.113.10")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    cluster.shutdown().await;

    // Without trusted proxies the header is ignored: every failure counts against the peer.
    let cluster = Cluster::start_without_workers(1, |config| {
        config.auth_failures.burst = 3;
        config.auth_failures.per_second = 0.001;
    })
    .await;
    for forwarded_for in ["203.0.113.7", "203.0.113.8", "203.0.113.9"] {
        assert_eq!(wrong_key_via(&cluster, Some(forwarded_for)).await, 401);
    }
    assert_eq!(wrong_key_via(&cluster, Some("203.0.113.10")).await, 429);
    cluster.shutdown().await;
}

/// Sends a request's headers declaring `declared` bytes of body and then only `sent` of them,
/// and answers the status line the server replies with (while the rest of the body is unsent).
async fn status_with_unsent_body(
    cluster: &Cluster,
    method_and_path: &str,
    bearer: &str,
    declared: usize,
    sent: usize,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(cluster.http).await.unwrap();
    let head = format!(
        "{method_and_path} HTTP/1.1\r\nhost: vaultvec\r\nauthorization: Bearer {bearer}\r\n\
         content-type: application/json\r\ncontent-length: {declared}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&vec![b' '; sent]).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // A guard, not a measurement: before the fix the server waited for the whole body, forever.
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while !answer.windows(2).any(|w| w == b"\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer while the declared body was not sent"
    );
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or("").to_owned()
}

/// INV-22: a request is authenticated from its headers before any of its body is read, and an
/// authenticated one is held to its tier's body limit before reading: a client without a key
/// cannot make the coordinator buffer a 48 MiB body (before the fix 16 such uploads grew it by
/// 572 MiB before any 401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_read_only_after_authentication_and_within_the_tier() {
    let cluster = Cluster::start(1).await;
    let bad = "vv_AAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    let line = status_with_unsent_body(
        &cluster,
        "POST /v1/collections/c/points/search",
        bad,
        48 << 20,
        1024,
    )
    .await;
    assert!(line.contains(" 401 "), "{line}");
    let line = status_with_unsent_body(
        &cluster,
        "POST /admin/v1/tenants",
        "not-the-admin-token",
        48 << 20,
        1024,
    )
    .await;
    assert!(line.contains(" 401 "), "{line}");
    // A valid key on tier `free` (256 KiB bodies) declaring 1 MiB is refused before reading.
    let key = cluster.tenant("small-bodies", Some("free")).await;
    let line =
        status_with_unsent_body(&cluster, "PUT /v1/collections/c/points", &key, 1 << 20, 0).await;
    assert!(line.contains(" 413 "), "{line}");
    // The admin token, too, gets only small bodies.
    let line = status_with_unsent_body(
        &cluster,
        "POST /admin/v1/tenants",
        tests::ADMIN_TOKEN,
        1 << 20,
        0,
    )
    .await;
    assert!(line.contains(" 413 "), "{line}");
    cluster.shutdown().await;
}

/// gRPC checks the key from the metadata before the message is decoded: a caller without a key
/// learns nothing about its bytes (before the fix an undecodable message answered
/// INVALID_ARGUMENT to anyone), and the message of an unauthenticated call is never decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_authenticates_before_decoding_the_message() {
    let cluster = Cluster::start(1).await;
    let channel = cluster.grpc_channel().await;
    let call = |bearer: &'static str| {
        let channel = channel.clone();
        async move {
            let mut client = tonic::client::Grpc::new(channel);
            client.ready().await.unwrap();
            let mut request = tonic::Request::new(vec![0xffu8; 64]);
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
            client
                .unary::<_, Vec<u8>, _>(
                    request,
                    "/vaultvec.v1.Points/Search".parse().unwrap(),
                    RawCodec,
                )
                .await
                .unwrap_err()
        }
    };
    let status = call("vv_AAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB").await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let key: &'static str = Box::leak(cluster.tenant("raw", None).await.into_boxed_str());
    let status = call(key).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    cluster.shutdown().await;
}

/// Sends raw bytes as a gRPC message and reads the answer's bytes.
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Failed authentications are coalesced: a run of failures from one address on one key id costs
/// the store no row per request, and the export shows them as (at most a few) rows whose counts
/// add up to every failure, over HTTP and gRPC alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_audited_as_counted_rows_not_one_row_each() {
    let cluster =
        Cluster::start_without_workers(1, |config| config.auth_failures.burst = 100_000).await;
    let wrong = format!("vv_COUNTED1_{}", "C".repeat(32));
    for _ in 0..150 {
        let (status, _) = cluster
            .http("GET", "/v1/collections", Some(&wrong), None)
            .await;
        assert_eq!(status, 401);
    }
    let mut client = PointsClient::new(cluster.grpc_channel().await);
    for _ in 0..50 {
        let refused = client
            .count(with_key(
                api::CountRequest {
                    collection: "c".into(),
                    filter: None,
                },
                &wrong,
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/platform", None).await;
    let rows: Vec<&Value> = export["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "auth.failure" && r["resource"] == "COUNTED1")
        .collect();
    let counted: u64 = rows
        .iter()
        .map(|r| r["details"]["count"].as_u64().expect("a count"))
        .sum();
    assert_eq!(counted, 200, "{rows:#?}");
    // One window's row, or two if a periodic write fell in the middle of the run.
    assert!(
        rows.len() <= 2,
        "{} rows for one address and key",
        rows.len()
    );
    assert!(rows.iter().all(|r| r["actor"] == "peer:127.0.0.1"));
    cluster.shutdown().await;
}

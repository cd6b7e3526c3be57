//! Snapshot archives out of the store and back in (`GET`/`PUT
//! /admin/v1/tenants/{t}/snapshots/{id}/archive`): a downloaded archive uploaded again is kept,
//! verifies and restores; a hostile or foreign upload (not a tar, a flipped bit, another tenant's,
//! another id, a link, a `..` name, a duplicate, too large declared or sent, keys destroyed) is
//! refused with nothing left in the store and nothing sent to a worker.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;
use tests::Cluster;

use super::snapshots::{
    archive_path, audit_actions, count, files_under, put, restore, snapshot_id, tag, tenant_dir,
    verify,
};

fn archive_url(cluster: &Cluster, tenant: &str, id: &str) -> String {
    cluster.url(&format!(
        "/admin/v1/tenants/{tenant}/snapshots/{id}/archive"
    ))
}

async fn download(cluster: &Cluster, tenant: &str, id: &str) -> Vec<u8> {
    let response = reqwest::Client::new()
        .get(archive_url(cluster, tenant, id))
        .bearer_auth(tests::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-tar"
    );
    response.bytes().await.unwrap().to_vec()
}

async fn upload(cluster: &Cluster, tenant: &str, id: &str, archive: Vec<u8>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .put(archive_url(cluster, tenant, id))
        .bearer_auth(tests::ADMIN_TOKEN)
        .header("content-type", "application/x-tar")
        .body(archive)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Deletes snapshot `id` of `tenant` from the store.
async fn delete_snapshot(cluster: &Cluster, tenant: &str, id: &str) {
    let (status, body) = cluster
        .admin(
            "DELETE",
            &format!("/admin/v1/tenants/{tenant}/snapshots/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The names in `tenant`'s directory of the snapshot store.
fn store_names(cluster: &Cluster, tenant: &str) -> Vec<String> {
    let dir = archive_path(cluster, tenant, "x")
        .parent()
        .unwrap()
        .to_owned();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_taken_out_of_the_store_comes_back_verifies_and_restores() {
    let cluster = Cluster::start(1).await;
    let acme = cluster.tenant("acme", None).await;
    cluster.create_collection(&acme, "docs", 4).await;
    put(&cluster, &acme, 0..100, "v1").await;
    let id = snapshot_id(&cluster, "acme").await;
    put(&cluster, &acme, 50..130, "v2").await;

    let archive = download(&cluster, "acme", &id).await;
    assert_eq!(
        archive,
        std::fs::read(archive_path(&cluster, "acme", &id)).unwrap()
    );
    // Only with the admin token; an unknown snapshot is 404.
    let response = reqwest::Client::new()
        .get(archive_url(&cluster, "acme", &id))
        .bearer_auth("vv_admin_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let (status, _) = cluster
        .admin(
            "GET",
            "/admin/v1/tenants/acme/snapshots/snap-0123456789abcdef/archive",
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Deleted from the store (its KEK version lives on: no rotation), then brought back.
    delete_snapshot(&cluster, "acme", &id).await;
    assert!(!archive_path(&cluster, "acme", &id).exists());
    let (status, body) = upload(&cluster, "acme", &id, archive.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["origin"], "upload");
    assert_eq!(body["archive_bytes"], archive.len() as u64);
    let kept = archive_path(&cluster, "acme", &id);
    assert_eq!(std::fs::read(&kept).unwrap(), archive);
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let created = audit_actions(&cluster, "acme", "snapshot.create").await;
    assert_eq!(created.last().unwrap()["details"]["origin"], "upload");
    assert_eq!(verify(&cluster, "acme", &id).await["verified"], true);
    // The same id again: refused, the kept archive untouched.
    let (status, body) = upload(&cluster, "acme", &id, archive.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(std::fs::read(&kept).unwrap(), archive);

    let (status, body) = restore(&cluster, "acme", &id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(count(&cluster, &acme).await, 100);
    assert_eq!(tag(&cluster, &acme, 60).await.as_deref(), Some("v1"));
    assert_eq!(tag(&cluster, &acme, 120).await, None);
    put(&cluster, &acme, 200..210, "v3").await;
    assert_eq!(count(&cluster, &acme).await, 110);
    cluster.shutdown().await;
}

/// A ustar header and data for one entry of kind `kind` (`b'0'` a file, `b'2'` a symbolic
/// link), written by hand so that names a tar library refuses to write can be tried.
fn tar_entry(name: &str, kind: u8, link: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000600\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// The archive's first entry (the signed description), header and padded data.
fn description(archive: &[u8]) -> Vec<u8> {
    let size = std::str::from_utf8(&archive[124..135]).unwrap();
    let size = usize::from_str_radix(size.trim_matches(char::from(0)).trim(), 8).unwrap();
    archive[..512 + size.div_ceil(512) * 512].to_vec()
}

/// The first entry of `entries`, header and padded data.
fn first_entry(entries: &[u8]) -> Vec<u8> {
    description(entries)
}

/// The archive's entries after the description, up to the end marker.
fn entries_after_description(archive: &[u8]) -> Vec<u8> {
    let start = description(archive).len();
    let mut end = start;
    while end + 512 <= archive.len() && archive[end..end + 512].iter().any(|&b| b != 0) {
        let size = std::str::from_utf8(&archive[end + 124..end + 135]).unwrap();
        let size = usize::from_str_radix(size.trim_matches(char::from(0)).trim(), 8).unwrap();
        end += 512 + size.div_ceil(512) * 512;
    }
    archive[start..end].to_vec()
}

fn with_end(mut archive: Vec<u8>) -> Vec<u8> {
    archive.extend_from_slice(&[0u8; 1024]);
    archive
}

fn small_store(config: &mut coordinator::config::Config) {
    config.snapshots.limits.max_bytes = 1 << 20;
    config.snapshots.limits.max_files = 20;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_foreign_uploads_are_refused_and_leave_nothing_behind() {
    let mut cluster = Cluster::start_without_workers(1, small_store).await;
    cluster.start_worker(0).await;
    let acme = cluster.tenant("acme", None).await;
    let beta = cluster.tenant("beta", None).await;
    cluster.create_collection(&acme, "docs", 4).await;
    cluster.create_collection(&beta, "docs", 4).await;
    put(&cluster, &acme, 0..100, "acme").await;
    put(&cluster, &beta, 0..7, "beta").await;
    let acme_id = snapshot_id(&cluster, "acme").await;
    let beta_id = snapshot_id(&cluster, "beta").await;
    let good = download(&cluster, "acme", &acme_id).await;
    let beta_archive = download(&cluster, "beta", &beta_id).await;
    // Deleted from the store, so that each upload below is of an id the store does not hold.
    delete_snapshot(&cluster, "acme", &acme_id).await;
    delete_snapshot(&cluster, "beta", &beta_id).await;
    let worker_files = files_under(&tenant_dir(&cluster, 0, "acme"));

    let mut flipped = good.clone();
    let at = good.len() - 1024 - 600;
    flipped[at] ^= 0x10;
    let head = description(&good);
    let rest = entries_after_description(&good);
    let first_file = first_entry(&rest);
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        (
            "not a tar",
            &acme_id,
            b"hello, this is not an archive".repeat(100),
            400,
        ),
        ("empty", &acme_id, Vec::new(), 400),
        ("a flipped bit", &acme_id, flipped, 400),
        ("cut short", &acme_id, good[..good.len() / 2].to_vec(), 400),
        ("another tenant's", &beta_id, beta_archive.clone(), 400),
        ("another id", &beta_id, good.clone(), 400),
        (
            "a symbolic link",
            &acme_id,
            with_end(
                [
                    head.clone(),
                    tar_entry("files/docs/MANIFEST", b'2', "/etc/passwd", b""),
                ]
                .concat(),
            ),
            400,
        ),
        (
            "a dot-dot name",
            &acme_id,
            with_end(
                [
                    head.clone(),
                    tar_entry("files/../../escape", b'0', "", b"x"),
                ]
                .concat(),
            ),
            400,
        ),
        (
            "an absolute name",
            &acme_id,
            with_end([head.clone(), tar_entry("/tmp/escape", b'0', "", b"x")].concat()),
            400,
        ),
        (
            "a duplicate",
            &acme_id,
            with_end([head.clone(), first_file.clone(), rest.clone()].concat()),
            400,
        ),
    ];
    for (what, id, archive, want) in cases {
        let (status, body) = upload(&cluster, "acme", id, archive).await;
        assert_eq!(status, want, "{what}: {body}");
        assert!(
            body["error"]["message"].as_str().is_some(),
            "{what}: {body}"
        );
        assert!(
            store_names(&cluster, "acme").is_empty(),
            "{what}: {:?}",
            store_names(&cluster, "acme")
        );
        let (status, body) = cluster
            .admin("GET", "/admin/v1/tenants/acme/snapshots", None)
            .await;
        assert_eq!(
            (status, body["snapshots"].as_array().unwrap().len()),
            (200, 0),
            "{what}"
        );
    }

    // Too large: declared (refused before a byte is read) and sent without a length.
    let limit = (1u64 << 20) + (32 << 20) + 22 * 1024 + 10_240;
    let response = reqwest::Client::new()
        .put(archive_url(&cluster, "acme", &acme_id))
        .bearer_auth(tests::ADMIN_TOKEN)
        .header("content-length", (limit + 1).to_string())
        .body(vec![0u8; 16])
        .send()
        .await;
    // The server answers 413 without reading the body; the client may see the answer or a
    // connection closed under its upload.
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
    }
    let stream = futures_util::stream::iter(
        (0..(limit / (1 << 20) + 2)).map(|_| Ok::<_, std::io::Error>(vec![0u8; 1 << 20])),
    );
    let response = reqwest::Client::new()
        .put(archive_url(&cluster, "acme", &acme_id))
        .bearer_auth(tests::ADMIN_TOKEN)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
    }
    assert!(store_names(&cluster, "acme").is_empty());

    // Without the admin token nothing is read or kept; an unknown tenant or a malformed id.
    let response = reqwest::Client::new()
        .put(archive_url(&cluster, "acme", &acme_id))
        .bearer_auth("nope")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let (status, _) = upload(&cluster, "nobody", &acme_id, good.clone()).await;
    assert_eq!(status, 404);
    let (status, _) = upload(&cluster, "acme", "snap-../../x", good.clone()).await;
    assert!(status == 400 || status == 404, "{status}");
    assert!(store_names(&cluster, "acme").is_empty());

    // Nothing reached the worker.
    assert_eq!(files_under(&tenant_dir(&cluster, 0, "acme")), worker_files);

    // Its KEK version destroyed (a rotation retired it, and no snapshot needs it): an archive
    // that can never be restored is not stored.
    let (status, body) = cluster
        .admin("POST", "/admin/v1/tenants/acme/rotate-kek", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = upload(&cluster, "acme", &acme_id, good.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("can never be restored"),
        "{body}"
    );
    assert!(store_names(&cluster, "acme").is_empty());

    // Both tenants serve as before; beta's archive still uploads.
    assert_eq!(count(&cluster, &acme).await, 100);
    assert_eq!(count(&cluster, &beta).await, 7);
    let (status, body) = upload(&cluster, "beta", &beta_id, beta_archive).await;
    assert_eq!(status, 200, "{body}");
    cluster.shutdown().await;
}

fn tiny_store(config: &mut coordinator::config::Config) {
    config.snapshots.max_total_bytes = 2048;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_never_fills_the_store_past_its_bound() {
    let mut cluster = Cluster::start_without_workers(1, tiny_store).await;
    cluster.start_worker(0).await;
    let acme = cluster.tenant("acme", None).await;
    cluster.create_collection(&acme, "docs", 4).await;
    put(&cluster, &acme, 0..100, "acme").await;
    // The store is empty, so one snapshot starts; it takes more than the store's 2,048 bytes.
    let id = snapshot_id(&cluster, "acme").await;
    let archive = download(&cluster, "acme", &id).await;
    assert!(archive.len() > 2048);
    delete_snapshot(&cluster, "acme", &id).await;

    // Declared: refused before a byte is read.
    let (status, body) = upload(&cluster, "acme", &id, archive.clone()).await;
    assert_eq!(status, 429, "{body}");
    // Streamed without a length: cut off once it passes the room left (64 MiB would be
    // read whole and refused as not a tar if only the whole upload were checked).
    let pieces = (0..64).map(|_| Ok::<_, std::io::Error>(vec![0u8; 1 << 20]));
    let response = reqwest::Client::new()
        .put(archive_url(&cluster, "acme", &id))
        .bearer_auth(tests::ADMIN_TOKEN)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await;
    // The server answers 429 and stops reading: the client reads that answer, or (when it was
    // still writing) finds the connection closed under its upload. Read whole, the upload would
    // be answered 400 (zeros are not an archive), never cut off.
    match response {
        Ok(response) => assert_eq!(response.status(), 429),
        Err(err) => assert!(err.is_request(), "{err:?}"),
    }
    assert!(store_names(&cluster, "acme").is_empty());
    cluster.shutdown().await;
}

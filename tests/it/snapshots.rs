//! Snapshots through the admin API against real workers: taken while the tenant is written,
//! listed, verified, restored (the tenant answers exactly what it held when the snapshot was
//! taken, on every copy), deleted; stored archives that were tampered with or swapped for another
//! tenant's are refused before anything reaches a worker; a restore never lets a DEK encrypt at
//! a position it used before (INV-05); a deleted tenant's snapshots are gone and its keys with
//! them (INV-15); KEK versions a snapshot needs survive rotations until it is deleted. The
//! schedule, the sweep at start and the store's limits are in `snapshot_store.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use storage::crypto::KeyService;
use tests::Cluster;

pub(crate) async fn put(cluster: &Cluster, key: &str, ids: std::ops::Range<u64>, tag: &str) {
    let points: Vec<Value> = ids
        .map(|id| json!({"id": id, "vector": [id as f32, 1.0, -1.0, 0.5], "payload": {"tag": tag}}))
        .collect();
    for chunk in points.chunks(200) {
        let (status, body) = cluster
            .http(
                "PUT",
                "/v1/collections/docs/points",
                Some(key),
                Some(json!({ "points": chunk })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

pub(crate) async fn count(cluster: &Cluster, key: &str) -> u64 {
    let (status, body) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/count",
            Some(key),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["count"].as_u64().unwrap()
}

/// The payload tag of point `id`, or `None` if it does not exist.
pub(crate) async fn tag(cluster: &Cluster, key: &str, id: u64) -> Option<String> {
    let (status, body) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/get",
            Some(key),
            Some(json!({"ids": [id], "with_payload": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["points"]
        .as_array()
        .unwrap()
        .first()
        .map(|p| p["payload"]["tag"].as_str().unwrap().to_owned())
}

async fn snapshot(cluster: &Cluster, tenant: &str) -> Value {
    let (status, body) = cluster
        .admin(
            "POST",
            &format!("/admin/v1/tenants/{tenant}/snapshots"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Takes a snapshot of `tenant` and answers its id.
pub(crate) async fn snapshot_id(cluster: &Cluster, tenant: &str) -> String {
    snapshot(cluster, tenant).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Restores `tenant` from its snapshot `id` through the admin API.
pub(crate) async fn restore(cluster: &Cluster, tenant: &str, id: &str) -> (u16, Value) {
    cluster
        .admin(
            "POST",
            &format!("/admin/v1/tenants/{tenant}/snapshots/{id}/restore"),
            None,
        )
        .await
}

pub(crate) async fn verify(cluster: &Cluster, tenant: &str, id: &str) -> Value {
    let (status, body) = cluster
        .admin(
            "POST",
            &format!("/admin/v1/tenants/{tenant}/snapshots/{id}/verify"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

pub(crate) fn coordinator_dir(cluster: &Cluster) -> PathBuf {
    cluster.dir().join("coordinator")
}

pub(crate) fn archive_path(cluster: &Cluster, tenant: &str, id: &str) -> PathBuf {
    coordinator_dir(cluster)
        .join("snapshots")
        .join(tenant)
        .join(format!("{id}.tar"))
}

/// Every file under `dir`, by path relative to it, with its bytes.
pub(crate) fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

pub(crate) fn tenant_dir(cluster: &Cluster, worker: usize, tenant: &str) -> PathBuf {
    cluster.worker_dir(worker).join("tenants").join(tenant)
}

pub(crate) async fn audit_actions(cluster: &Cluster, chain: &str, action: &str) -> Vec<Value> {
    let (status, export) = cluster
        .admin("GET", &format!("/admin/v1/audit/{chain}"), None)
        .await;
    assert_eq!(status, 200, "{export}");
    super::cluster::audit_rows(&export, action)
}

/// The coordinator's key service, opened beside the running one on the same files.
pub(crate) fn key_service(cluster: &Cluster) -> storage::crypto::LocalKeyService {
    let dir = coordinator_dir(cluster);
    let root = storage::crypto::LocalKeyFile::open(&dir.join("root.key")).unwrap();
    storage::crypto::LocalKeyService::open(Arc::new(root), &dir.join("keks")).unwrap()
}

/// Every segment and WAL file of `tenant` by its DEK (unwrapped with the tenant's KEKs, so a
/// re-wrapped header still names the same key): DEK bytes -> (name, bytes after the header).
pub(crate) fn deks(
    keys: &storage::crypto::LocalKeyService,
    tenant: &str,
    files: &BTreeMap<String, Vec<u8>>,
) -> HashMap<Vec<u8>, (String, Vec<u8>)> {
    let tenant = storage::ids::TenantId::parse(tenant).unwrap();
    files
        .iter()
        .filter(|(name, _)| name.contains("/seg-") || name.contains("/wal-"))
        .map(|(name, bytes)| {
            let header = storage::sealed::Header::decode(bytes, Path::new(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let ctx = storage::crypto::DekContext {
                collection: &header.collection,
                file_id: header.file_id,
            };
            let dek = keys
                .decrypt_data_key(&tenant, ctx, &header.wrapped_dek)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let body =
                bytes[storage::sealed::Header::encoded_len(header.sections.len())..].to_vec();
            (dek.to_wire().to_vec(), (name.clone(), body))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_brings_back_exactly_the_snapshot_and_no_dek_encrypts_twice() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    put(&cluster, &key, 0..300, "before").await;

    let taken = snapshot(&cluster, "acme").await;
    let id = taken["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("snap-"), "{taken}");
    assert!(taken["files"].as_u64().unwrap() >= 2, "{taken}");
    assert_eq!(taken["origin"], "admin");
    assert_eq!(taken["kek_versions"], json!([1]));
    let at_snapshot = files_under(&tenant_dir(&cluster, 0, "acme"));
    let (status, listed) = cluster
        .admin("GET", "/admin/v1/tenants/acme/snapshots", None)
        .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["snapshots"][0]["id"], id.as_str(), "{listed}");
    let verified = verify(&cluster, "acme", &id).await;
    assert_eq!(verified["verified"], true, "{verified}");
    assert_eq!(verified["files"], taken["files"], "{verified}");

    // The archive holds ciphertext only: no payload tag appears in it.
    let archive = std::fs::read(archive_path(&cluster, "acme", &id)).unwrap();
    assert!(!archive.windows(6).any(|w| w == b"before"));

    // Changes after the snapshot: new points, overwrites, deletions.
    put(&cluster, &key, 300..400, "after").await;
    put(&cluster, &key, 0..50, "overwritten").await;
    let (status, body) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/delete",
            Some(&key),
            Some(json!({"ids": [60, 61, 62]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(count(&cluster, &key).await, 397);
    let before_restore = files_under(&tenant_dir(&cluster, 0, "acme"));

    let (status, restored) = restore(&cluster, "acme", &id).await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored["snapshot"], id.as_str());
    assert_eq!(restored["files"], taken["files"]);
    // The restored files are re-wrapped under a new KEK version at once.
    assert_eq!(restored["kek_version"], 2, "{restored}");
    assert_eq!(count(&cluster, &key).await, 300);
    assert_eq!(tag(&cluster, &key, 10).await.as_deref(), Some("before"));
    assert_eq!(tag(&cluster, &key, 61).await.as_deref(), Some("before"));
    assert_eq!(tag(&cluster, &key, 350).await, None);
    // `started` before the switch, `ok` once it is done (the answer names that one).
    let rows = audit_actions(&cluster, "acme", "snapshot.restore").await;
    let outcomes: Vec<&str> = rows
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["started", "ok"], "{rows:?}");
    assert_eq!(rows[1]["seq"], restored["audit_row"]["seq"]);
    assert_eq!(
        audit_actions(&cluster, "acme", "snapshot.create")
            .await
            .len(),
        1
    );

    // Writes after the restore land, and go to files under fresh DEKs: every DEK seen before
    // the restore that is in a file now is in a byte-identical file (nothing was appended under
    // it), and some file has a DEK never seen.
    put(&cluster, &key, 1000..1100, "later").await;
    assert_eq!(count(&cluster, &key).await, 400);
    let now = files_under(&tenant_dir(&cluster, 0, "acme"));
    let keys = key_service(&cluster);
    // A DEK's file as it was at the snapshot and just before the restore (a WAL grew between).
    let mut seen: HashMap<Vec<u8>, Vec<(String, Vec<u8>)>> = HashMap::new();
    for files in [&at_snapshot, &before_restore] {
        for (dek, file) in deks(&keys, "acme", files) {
            seen.entry(dek).or_default().push(file);
        }
    }
    let mut fresh = 0;
    for (dek, (name, body)) in deks(&keys, "acme", &now) {
        match seen.get(&dek) {
            Some(versions) => assert!(
                versions.iter().any(|(_, old)| *old == body),
                "{name} is encrypted under the DEK of {} from before the restore and is none of \
                 its versions then ({} bytes now): written to after the restore",
                versions[0].0,
                body.len()
            ),
            None => fresh += 1,
        }
    }
    assert!(fresh >= 1, "no file under a fresh DEK after the restore");

    // Deleting the snapshot removes its archive and its record.
    let (status, body) = cluster
        .admin(
            "DELETE",
            &format!("/admin/v1/tenants/acme/snapshots/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!archive_path(&cluster, "acme", &id).exists());
    let (_, listed) = cluster
        .admin("GET", "/admin/v1/tenants/acme/snapshots", None)
        .await;
    assert_eq!(listed["snapshots"], json!([]));
    let (status, _) = restore(&cluster, "acme", &id).await;
    assert_eq!(status, 404);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_or_swapped_archives_are_refused_before_anything_reaches_a_worker() {
    let cluster = Cluster::start(1).await;
    let acme = cluster.tenant("acme", Some("pro")).await;
    let beta = cluster.tenant("beta", Some("pro")).await;
    cluster.create_collection(&acme, "docs", 4).await;
    cluster.create_collection(&beta, "docs", 4).await;
    put(&cluster, &acme, 0..100, "acme").await;
    put(&cluster, &beta, 0..7, "beta").await;
    let acme_snap = snapshot_id(&cluster, "acme").await;
    let beta_snap = snapshot_id(&cluster, "beta").await;
    put(&cluster, &acme, 100..120, "acme").await;

    // Another tenant's snapshot by id.
    let (status, body) = restore(&cluster, "acme", &beta_snap).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("of tenant beta"),
        "{body}"
    );

    let acme_path = archive_path(&cluster, "acme", &acme_snap);
    let good = std::fs::read(&acme_path).unwrap();
    let files_before = files_under(&tenant_dir(&cluster, 0, "acme"));

    // One flipped bit in the last file's ciphertext; beta's archive put in place of acme's;
    // the archive replaced by a link to beta's; the archive cut short.
    let mut flipped = good.clone();
    let at = good.len() - 1024 - 600;
    flipped[at] ^= 0x10;
    let beta_archive = std::fs::read(archive_path(&cluster, "beta", &beta_snap)).unwrap();
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "flipped",
            Box::new(move |p: &Path| std::fs::write(p, &flipped).unwrap()),
        ),
        (
            "swapped",
            Box::new(move |p: &Path| std::fs::write(p, &beta_archive).unwrap()),
        ),
        (
            "linked",
            Box::new({
                let target = archive_path(&cluster, "beta", &beta_snap);
                move |p: &Path| {
                    std::fs::remove_file(p).unwrap();
                    std::os::unix::fs::symlink(&target, p).unwrap();
                }
            }),
        ),
        (
            "cut",
            Box::new({
                let good = good.clone();
                move |p: &Path| std::fs::write(p, &good[..good.len() / 2]).unwrap()
            }),
        ),
    ];
    for (what, damage) in cases {
        let _ = std::fs::remove_file(&acme_path);
        std::fs::write(&acme_path, &good).unwrap();
        damage(&acme_path);
        let verified = verify(&cluster, "acme", &acme_snap).await;
        assert_eq!(verified["verified"], false, "{what}: {verified}");
        assert!(verified["error"].is_string(), "{what}: {verified}");
        let (status, body) = restore(&cluster, "acme", &acme_snap).await;
        assert!(status == 409 || status == 500, "{what}: {status} {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("snapshot"),
            "{what}: {body}"
        );
        // Nothing changed on the worker, and the tenant serves and takes writes as before.
        assert_eq!(
            files_under(&tenant_dir(&cluster, 0, "acme")),
            files_before,
            "{what}"
        );
        assert_eq!(count(&cluster, &acme).await, 120, "{what}");
    }
    // The good archive restores.
    let _ = std::fs::remove_file(&acme_path);
    std::fs::write(&acme_path, &good).unwrap();
    let (status, body) = restore(&cluster, "acme", &acme_snap).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(count(&cluster, &acme).await, 100);
    assert_eq!(count(&cluster, &beta).await, 7);
    assert_eq!(tag(&cluster, &beta, 3).await.as_deref(), Some("beta"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_reaches_every_copy_of_a_replicated_tenant() {
    fn two_copies(config: &mut coordinator::config::Config) {
        config.tiers.get_mut("pro").expect("pro tier").replicas = 2;
    }
    let mut cluster = Cluster::start_without_workers(2, two_copies).await;
    cluster.start_worker(0).await;
    cluster.start_worker(1).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    put(&cluster, &key, 0..200, "before").await;
    let id = snapshot_id(&cluster, "acme").await;
    put(&cluster, &key, 200..260, "after").await;
    let (status, restored) = restore(&cluster, "acme", &id).await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(
        restored["replicas"].as_array().unwrap().len(),
        1,
        "{restored}"
    );
    // Both copies are live again and hold the snapshot: stop each in turn and read the other.
    let (_, replicas) = super::replication::copies(&cluster, "acme").await;
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    assert!(
        replicas.iter().all(|(_, state)| state == "live"),
        "{replicas:?}"
    );
    for i in 0..2 {
        cluster.stop_worker(i).await;
        assert_eq!(count(&cluster, &key).await, 200, "with worker {i} stopped");
        assert_eq!(tag(&cluster, &key, 250).await, None);
        cluster.start_worker(i).await;
        cluster.service().wait_for_replicas_settled().await;
    }
    cluster.shutdown().await;
}

/// The first segment or WAL file in an archive: its header.
fn first_sealed_header(archive: &[u8]) -> storage::sealed::Header {
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name.contains("/seg-") || name.contains("/wal-") {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            return storage::sealed::Header::decode(&bytes, Path::new(&name)).unwrap();
        }
    }
    panic!("no segment or WAL in the archive");
}

fn unwrap_with(
    keys: &storage::crypto::LocalKeyService,
    tenant: &str,
    header: &storage::sealed::Header,
) -> Result<(), String> {
    let tenant = storage::ids::TenantId::parse(tenant).unwrap();
    let ctx = storage::crypto::DekContext {
        collection: &header.collection,
        file_id: header.file_id,
    };
    keys.decrypt_data_key(&tenant, ctx, &header.wrapped_dek)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenants_snapshots_are_gone_and_a_kept_copy_does_not_decrypt() {
    let cluster = Cluster::start(1).await;
    let beta = cluster.tenant("beta", Some("pro")).await;
    cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&beta, "docs", 4).await;
    put(&cluster, &beta, 0..50, "beta").await;
    let id = snapshot_id(&cluster, "beta").await;
    // Someone keeps a copy of the archive; and a file that is not the store's sits beside it.
    let kept = std::fs::read(archive_path(&cluster, "beta", &id)).unwrap();
    let foreign = archive_path(&cluster, "beta", &id).with_file_name("notes.txt");
    std::fs::write(&foreign, b"not an archive").unwrap();
    let header = first_sealed_header(&kept);
    assert_eq!(header.tenant, "beta");
    // While beta lives its KEK unwraps the archive's DEKs; acme's never does (AAD and KEK are
    // the tenant's: beta's files restored into acme would not decrypt).
    assert_eq!(unwrap_with(&key_service(&cluster), "beta", &header), Ok(()));
    assert!(unwrap_with(&key_service(&cluster), "acme", &header).is_err());

    let (status, receipt) = cluster
        .admin("DELETE", "/admin/v1/tenants/beta", None)
        .await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["snapshots_deleted"], 1, "{receipt}");
    assert!(!archive_path(&cluster, "beta", &id).exists());
    assert!(
        foreign.exists(),
        "a file the store did not write was deleted"
    );
    let (status, _) = restore(&cluster, "beta", &id).await;
    assert_eq!(status, 404);
    let (status, _) = restore(&cluster, "acme", &id).await;
    assert_eq!(status, 404);
    // The kept copy does not decrypt: beta's KEKs are destroyed.
    let err = unwrap_with(&key_service(&cluster), "beta", &header).unwrap_err();
    assert!(!err.is_empty());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kek_version_a_snapshot_needs_outlives_rotations_until_the_snapshot_is_deleted() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    put(&cluster, &key, 0..40, "v1").await;
    let id = snapshot_id(&cluster, "acme").await;
    let (status, rotation) = cluster
        .admin("POST", "/admin/v1/tenants/acme/rotate-kek", None)
        .await;
    assert_eq!(status, 200, "{rotation}");
    assert_eq!(rotation["kek_version"], 2);
    assert_eq!(rotation["destroyed_versions"], json!([]), "{rotation}");
    assert_eq!(rotation["kept_for_snapshots"], json!([1]), "{rotation}");
    put(&cluster, &key, 40..60, "v2").await;
    assert_eq!(verify(&cluster, "acme", &id).await["verified"], true);
    let header = first_sealed_header(&std::fs::read(archive_path(&cluster, "acme", &id)).unwrap());
    assert_eq!(header.wrapped_dek.kek_version, 1);
    assert_eq!(unwrap_with(&key_service(&cluster), "acme", &header), Ok(()));

    // Restorable after the rotation; the restore re-wraps under a new version (3).
    let (status, restored) = restore(&cluster, "acme", &id).await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored["kek_version"], 3, "{restored}");
    assert_eq!(count(&cluster, &key).await, 40);

    // Deleting the snapshot destroys the version only it needed (and the tenant still serves).
    let (status, body) = cluster
        .admin(
            "DELETE",
            &format!("/admin/v1/tenants/acme/snapshots/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let destroyed = audit_actions(&cluster, "acme", "kek.destroy").await;
    assert_eq!(destroyed.len(), 1, "{destroyed:?}");
    assert_eq!(
        destroyed[0]["details"]["destroyed"],
        json!([1]),
        "{destroyed:?}"
    );
    assert!(unwrap_with(&key_service(&cluster), "acme", &header).is_err());
    assert_eq!(count(&cluster, &key).await, 40);
    assert_eq!(tag(&cluster, &key, 5).await.as_deref(), Some("v1"));
    // A rotation now has nothing kept.
    let (_, rotation) = cluster
        .admin("POST", "/admin/v1/tenants/acme/rotate-kek", None)
        .await;
    assert_eq!(rotation["kept_for_snapshots"], json!([]), "{rotation}");
    assert_eq!(count(&cluster, &key).await, 40);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_erasure_deletes_the_snapshots_that_could_bring_it_back() {
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    let points: Vec<Value> = (0..20u64)
        .map(|id| json!({"id": id, "vector": [id as f32, 0.0, 1.0, 2.0], "payload": {"entity_id": if id < 5 { "person-7" } else { "other" }, "tag": "x"}}))
        .collect();
    let (status, body) = cluster
        .http(
            "PUT",
            "/v1/collections/docs/points",
            Some(&key),
            Some(json!({ "points": points })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = snapshot_id(&cluster, "acme").await;
    let (status, receipt) = cluster
        .admin("DELETE", "/admin/v1/tenants/acme/entities/person-7", None)
        .await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["points"], 5, "{receipt}");
    assert_eq!(receipt["snapshots_deleted"], 1, "{receipt}");
    assert!(!archive_path(&cluster, "acme", &id).exists());
    let (status, _) = restore(&cluster, "acme", &id).await;
    assert_eq!(status, 404);
    assert_eq!(count(&cluster, &key).await, 15);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_under_writes_is_one_state_with_every_write_acknowledged_before_it() {
    let cluster = Arc::new(Cluster::start(1).await);
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    // One writer, one point per upsert, in id order: the tenant's state is always a prefix.
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (cluster, key, acked, stop) =
            (cluster.clone(), key.clone(), acked.clone(), stop.clone());
        async move {
            let mut id = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                put(&cluster, &key, id..id + 1, "w").await;
                id += 1;
                acked.store(id, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    // Some writes first, so the snapshot has a WAL that grows while it is copied.
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 200 {
        tokio::task::yield_now().await;
    }
    let before = acked.load(std::sync::atomic::Ordering::SeqCst);
    let id = snapshot_id(&cluster, "acme").await;
    let after = acked.load(std::sync::atomic::Ordering::SeqCst);
    // More writes after it.
    while acked.load(std::sync::atomic::Ordering::SeqCst) < after + 100 {
        tokio::task::yield_now().await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();

    let (status, restored) = restore(&cluster, "acme", &id).await;
    assert_eq!(status, 200, "{restored}");
    let n = count(&cluster, &key).await;
    // Every write acknowledged before the snapshot was asked for is in it; none acknowledged
    // after it answered is (one may have been in flight while it was taken).
    assert!(
        before <= n && n <= after + 1,
        "restored {n} points; {before} were acknowledged before the snapshot, {after} when it answered"
    );
    // And the state is a prefix: points 0..n, nothing after.
    assert_eq!(tag(&cluster, &key, n - 1).await.as_deref(), Some("w"));
    assert_eq!(tag(&cluster, &key, n).await, None);
    let cluster = Arc::try_unwrap(cluster).unwrap_or_else(|_| panic!("the cluster is shared"));
    cluster.shutdown().await;
}

//! Losing a worker: killed, cut off, or the coordinator restarted.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_under_load_loses_no_acknowledged_write_and_its_copy_catches_up() {
    let mut cluster = start(replicated, 3).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    let (primary, replicas) = copies(&cluster, "acme").await;
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    assert_eq!(replicas[0].1, "live", "a new tenant's copies start live");
    let replica = replicas[0].0.clone();
    assert_ne!(primary, replica);

    let client = Client::new(&cluster, &key);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let writers: Vec<_> = (1..=3)
        .map(|w| tokio::spawn(writer(client.clone(), w, stop.clone(), acked.clone())))
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(reader(client.clone(), stop.clone())))
        .collect();
    // Let the load run, then kill the primary's worker outright.
    while acked.lock().unwrap().len() < 200 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    cluster.kill_worker(index_of(&primary)).await;
    let acked_at_kill = acked.lock().unwrap().len();
    // Writes go on, on the other copy, until a few hundred more are acknowledged.
    while acked.lock().unwrap().len() < acked_at_kill + 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_after = killed_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut write_errors = 0;
    for w in writers {
        write_errors += w.await.expect("writer");
    }
    let (mut searches, mut search_errors, mut longest) = (0, 0, Duration::ZERO);
    for r in readers {
        let (ok, failed, gap) = r.await.expect("reader");
        searches += ok;
        search_errors += failed;
        longest = longest.max(gap);
    }
    eprintln!(
        "failover: {} writes acknowledged ({write_errors} retried), {searches} searches, \
         {search_errors} failed, longest gap {longest:?}, 300 writes after the kill took {first_after:?}",
        acked.lock().unwrap().len()
    );
    assert!(searches > 0);
    let acked = acked.lock().unwrap().clone();
    assert_all_acked(&client, &acked).await;

    // The surviving copy is the primary now; the killed one is stale and serves nothing.
    let (now_primary, replicas) = copies(&cluster, "acme").await;
    assert_eq!(now_primary, replica);
    assert_eq!(replicas, vec![(primary.clone(), "stale".to_owned())]);

    // Restarted, the killed copy catches up, and then holds everything by itself.
    cluster.start_worker_process(index_of(&primary)).await;
    cluster.service().wait_for_replicas_settled().await;
    let (_, replicas) = copies(&cluster, "acme").await;
    assert_eq!(replicas, vec![(primary.clone(), "live".to_owned())]);
    cluster.kill_worker(index_of(&replica)).await;
    assert_all_acked(&client, &acked).await;
    let (status, body) = client.upsert(7, 7).await;
    assert_eq!(status, 200, "writes go on with the caught-up copy: {body}");

    let export = cluster.admin("GET", "/admin/v1/audit/acme", None).await.1;
    let actions: Vec<String> = export["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect();
    for action in ["replica.add", "replica.stale", "replica.live"] {
        assert!(
            actions.iter().any(|a| a == action),
            "no {action} in {actions:?}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_missed_writes_serves_nothing_until_it_caught_up() {
    let mut cluster = start(replicated, 2).await;
    let client = filled_tenant(&cluster, 20).await;
    let (primary, replicas) = copies(&cluster, "acme").await;
    let replica = replicas[0].0.clone();

    // The replica's worker dies; a write goes to the primary alone, and the replica is stale.
    cluster.kill_worker(index_of(&replica)).await;
    let (status, body) = client.upsert(100, 2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        copies(&cluster, "acme").await.1,
        vec![(replica.clone(), "stale".to_owned())]
    );

    // Now the primary dies and the stale copy returns: it must not answer (it lacks point 100).
    cluster.kill_worker(index_of(&primary)).await;
    cluster.start_worker_process(index_of(&replica)).await;
    let (status, body) = client
        .call(
            "POST",
            "/v1/collections/docs/points/get",
            json!({ "ids": [100] }),
        )
        .await;
    assert_eq!(status, 503, "a stale copy answered: {body}");
    let (status, body) = client.search().await;
    assert_eq!(status, 503, "a stale copy answered: {body}");
    let (status, body) = client.upsert(101, 3).await;
    assert_eq!(status, 503, "a stale copy took a write: {body}");

    // The primary returns: the stale copy catches up from it and then holds point 100 alone.
    cluster.start_worker_process(index_of(&primary)).await;
    cluster.service().wait_for_replicas_settled().await;
    cluster.kill_worker(index_of(&primary)).await;
    let versions = client.versions(&[0, 19, 100]).await.expect("reading");
    assert_eq!(versions.get(&100), Some(&2), "{versions:?}");
    assert_eq!(versions.get(&19), Some(&1), "{versions:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_lost_for_the_grace_period_is_replaced_on_another_worker() {
    let mut cluster = start(replaced_quickly, 3).await;
    let client = filled_tenant(&cluster, 50).await;
    let (primary, replicas) = copies(&cluster, "acme").await;
    let lost = replicas[0].0.clone();
    let third = (0..3)
        .map(|i| format!("worker-{i}"))
        .find(|w| *w != primary && *w != lost)
        .expect("a third worker");
    cluster.kill_worker(index_of(&lost)).await;
    assert_eq!(client.upsert(50, 2).await.0, 200);
    // After the grace period the tenant gets a copy on the third worker, which catches up, and
    // the lost one is dropped.
    loop {
        cluster.service().wait_for_replicas_settled().await;
        let (_, replicas) = copies(&cluster, "acme").await;
        if replicas.iter().all(|(w, _)| *w != lost) {
            assert_eq!(replicas, vec![(third.clone(), "live".to_owned())]);
            break;
        }
        cluster.hub().wait_for_change().await;
    }
    // The lost worker's files stay until it is back; then it deletes them.
    let lost_files = cluster.worker_dir(index_of(&lost)).join("tenants/acme");
    assert!(lost_files.exists());
    assert_eq!(leftover_metric(&cluster).await, 1);
    cluster.start_worker_process(index_of(&lost)).await;
    cluster.service().wait_for_no_leftovers_on(&lost).await;
    assert!(
        !lost_files.exists(),
        "the returning worker deleted its copy"
    );
    assert_eq!(leftover_metric(&cluster).await, 0);
    cluster.kill_worker(index_of(&primary)).await;
    let versions = client.versions(&[0, 49, 50]).await.expect("reading");
    assert_eq!(versions.get(&50), Some(&2), "{versions:?}");
    assert_eq!(versions.get(&0), Some(&1), "{versions:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_coordinator_restart_replicas_copy_their_primary_before_serving() {
    let mut cluster = start(replicated, 2).await;
    let client = filled_tenant(&cluster, 30).await;
    cluster.restart_coordinator().await;
    cluster.service().wait_for_replicas_settled().await;
    assert_eq!(cluster.service().replicas_caught_up(), 1);
    let (primary, replicas) = copies(&cluster, "acme").await;
    assert_eq!(replicas.len(), 1);
    assert_eq!(replicas[0].1, "live");
    cluster.kill_worker(index_of(&primary)).await;
    let versions = client
        .versions(&(0..30).collect::<Vec<_>>())
        .await
        .expect("reading");
    assert_eq!(versions.len(), 30, "{versions:?}");
    let export = cluster.admin("GET", "/admin/v1/audit/acme", None).await.1;
    let reasons: Vec<String> = export["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["action"] == "replica.stale")
        .map(|r| r["details"]["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("coordinator restarted")),
        "{reasons:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_copy_is_written_around_and_after_the_heal_catches_up_before_serving() {
    let (mut cluster, links) = start_behind_links(replicated, 2).await;
    let client = filled_tenant(&cluster, 20).await;
    let (primary, replicas) = copies(&cluster, "acme").await;
    let replica = replicas[0].0.clone();

    // The primary's link goes silent (its process runs on, its socket stays open). The next
    // write waits until the tracker calls it down, then goes on with the other copy alone.
    links[index_of(&primary)].cut();
    let (status, body) = client.upsert(100, 2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(client.search().await.0, 200);
    let (now_primary, replicas) = copies(&cluster, "acme").await;
    assert_eq!(now_primary, replica);
    assert_eq!(replicas, vec![(primary.clone(), "stale".to_owned())]);
    for id in 101..110 {
        assert_eq!(client.upsert(id, 2).await.0, 200);
    }

    // Healed, the cut worker reconnects with its old copy: it serves nothing until it caught
    // up, and then holds everything, the writes made while it was cut off included.
    links[index_of(&primary)].heal();
    cluster.hub().wait_for_worker(&primary).await;
    cluster.service().wait_for_replicas_settled().await;
    assert_eq!(
        copies(&cluster, "acme").await.1,
        vec![(primary.clone(), "live".to_owned())]
    );
    cluster.kill_worker(index_of(&replica)).await;
    let ids: Vec<u64> = (0..20).chain(100..110).collect();
    let versions = client.versions(&ids).await.expect("reading");
    for id in ids {
        let want = if id < 20 { 1 } else { 2 };
        assert_eq!(versions.get(&id), Some(&want), "point {id}: {versions:?}");
    }
    cluster.shutdown().await;
}

/// `vaultvec_leftover_copies` on the coordinator's metrics.
async fn leftover_metric(cluster: &Cluster) -> u64 {
    cluster.metric("vaultvec_leftover_copies").await
}

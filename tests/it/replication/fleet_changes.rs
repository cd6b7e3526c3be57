//! Copies moving between workers: replaced, drained, handed over to a worker that joins.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_replicated_tenants_worker_under_load_gives_no_client_error() {
    let cluster = start(replicated, 3).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    let (primary, replicas) = copies(&cluster, "acme").await;
    let client = Client::new(&cluster, &key);
    let load = Load::start(&client, 2, 2);
    load.until_more_acked(100).await;
    // The primary's worker drains: its live replica takes over at once, and the repair makes a
    // new copy on the third worker.
    let (status, body) = cluster
        .admin("POST", &format!("/admin/v1/workers/{primary}/drain"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    cluster.service().wait_for_drains().await;
    loop {
        let (_, replicas) = copies(&cluster, "acme").await;
        if replicas.iter().all(|(w, s)| *w != primary && s == "live") && !replicas.is_empty() {
            break;
        }
        cluster.hub().wait_for_change().await;
    }
    load.until_more_acked(100).await;
    let (write_errors, search_errors, acked) = load.finish().await;
    assert_eq!(
        (write_errors, search_errors),
        (0, 0),
        "clients saw errors during the drain"
    );
    let (now_primary, now_replicas) = copies(&cluster, "acme").await;
    assert_eq!(now_primary, replicas[0].0, "the live replica took over");
    assert!(now_replicas.iter().all(|(w, _)| *w != primary));
    assert_all_acked(&client, &acked).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_single_copy_tenants_worker_under_load_gives_no_client_error() {
    let cluster = start(|_| {}, 2).await;
    let key = cluster.tenant("acme", None).await;
    cluster.create_collection(&key, "docs", 4).await;
    let (from, replicas) = copies(&cluster, "acme").await;
    assert!(replicas.is_empty(), "one copy: {replicas:?}");
    let client = Client::new(&cluster, &key);
    let load = Load::start(&client, 2, 2);
    load.until_more_acked(100).await;
    // Its worker drains: the tenant is handed over to the other one, served throughout.
    let (status, body) = cluster
        .admin("POST", &format!("/admin/v1/workers/{from}/drain"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    cluster.service().wait_for_drains().await;
    let (to, replicas) = copies(&cluster, "acme").await;
    assert_ne!(to, from);
    assert!(replicas.is_empty(), "one copy again: {replicas:?}");
    load.until_more_acked(100).await;
    let (write_errors, search_errors, acked) = load.finish().await;
    assert_eq!(
        (write_errors, search_errors),
        (0, 0),
        "clients saw errors during the drain"
    );
    assert_all_acked(&client, &acked).await;
    cluster.shutdown().await;
}

/// Single-copy tenants, and copies handed over to even the workers out.
fn rebalancing(config: &mut coordinator::config::Config) {
    config.health = HealthConfig {
        suspect_after: Duration::from_secs(2),
        down_after: Duration::from_secs(4),
    };
    config.auto_rebalance = true;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_joins_gets_copies_handed_over_with_no_client_error() {
    let mut cluster = Cluster::start_without_workers(3, rebalancing).await;
    cluster.start_worker_process(0).await;
    cluster.start_worker_process(1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let tenant = format!("t{t}");
        let key = cluster.tenant(&tenant, Some("pro")).await;
        cluster.create_collection(&key, "docs", 4).await;
        let client = Client::new(&cluster, &key);
        let acked: Acked = Arc::default();
        tasks.push((
            tokio::spawn(writer(client.clone(), 1, stop.clone(), acked.clone())),
            tokio::spawn(reader(client.clone(), stop.clone())),
        ));
        clients.push((tenant, client, acked));
    }
    let placed_on = |body: &Value, worker: &str| {
        body["placements"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["worker"] == worker)
            .count()
    };
    let (_, body) = cluster.admin("GET", "/admin/v1/placements", None).await;
    assert_eq!(
        (placed_on(&body, "worker-0"), placed_on(&body, "worker-1")),
        (2, 2)
    );

    // Worker 2 joins: one tenant is handed over to it, served all along.
    cluster.start_worker_process(2).await;
    let moved = loop {
        let (_, body) = cluster.admin("GET", "/admin/v1/placements", None).await;
        let on_new: Vec<String> = body["placements"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["worker"] == "worker-2" && p["replicas"].as_array().unwrap().is_empty())
            .map(|p| p["tenant"].as_str().unwrap().to_owned())
            .collect();
        if let Some(tenant) = on_new.first() {
            break tenant.clone();
        }
        cluster.hub().wait_for_change().await;
    };
    let total = || {
        clients
            .iter()
            .map(|(_, _, acked)| acked.lock().unwrap().len())
            .sum::<usize>()
    };
    let at_move = total();
    while total() < at_move + 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut write_errors, mut search_errors) = (0, 0);
    for (w, r) in tasks {
        write_errors += w.await.expect("writer");
        search_errors += r.await.expect("reader").1;
    }
    assert_eq!(
        (write_errors, search_errors),
        (0, 0),
        "clients saw errors while {moved} was handed over"
    );
    for (_, client, acked) in &clients {
        let acked = acked.lock().unwrap().clone();
        assert_all_acked(client, &acked).await;
    }
    let export = cluster
        .admin("GET", &format!("/admin/v1/audit/{moved}"), None)
        .await
        .1;
    let actions: Vec<&str> = export["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for action in [
        "replica.add",
        "replica.live",
        "replica.promote",
        "replica.remove",
    ] {
        assert!(actions.contains(&action), "no {action} in {actions:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_placed_while_one_worker_was_up_gets_its_second_copy_with_its_data() {
    let mut cluster = Cluster::start_without_workers(2, replicated).await;
    cluster.start_worker_process(0).await;
    let client = filled_tenant(&cluster, 30).await;
    assert!(copies(&cluster, "acme").await.1.is_empty());
    // A second worker joins: the tenant gets its second copy there, copied from the first (it
    // was written to at its first epoch, so the new copy cannot start live).
    cluster.start_worker_process(1).await;
    loop {
        cluster.service().wait_for_replicas_settled().await;
        if copies(&cluster, "acme").await.1 == vec![("worker-1".to_owned(), "live".to_owned())] {
            break;
        }
        cluster.hub().wait_for_change().await;
    }
    cluster.kill_worker(0).await;
    let versions = client
        .versions(&(0..30).collect::<Vec<_>>())
        .await
        .expect("reading from the new copy alone");
    assert_eq!(versions.len(), 30, "{versions:?}");
    cluster.shutdown().await;
}

//! `vaultvec-coordinator init`: a data directory for the embedded default (one coordinator and
//! its workers on loopback, three by default), with generated secrets (mode 0600), and a demo
//! tenant and API key.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use coordinator::audit::AuditKey;
use coordinator::auth::{KeyRecord, Pepper, Scopes, generate};
use coordinator::store::{Actor, Store};

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    hex::encode(buf)
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

pub fn run(dir: &Path, port: u16, workers: u16) -> anyhow::Result<()> {
    let config_path = dir.join("coordinator.toml");
    if config_path.exists() {
        println!(
            "{} exists; keeping the data directory as it is",
            config_path.display()
        );
        return Ok(());
    }
    if port > u16::MAX - 3 {
        bail!("port {port} leaves no room for the next three");
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("secrets"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let secrets = dir.join("secrets");
    let pepper = random_hex(32);
    let audit_key = random_hex(32);
    write_private(&secrets.join("pepper"), pepper.as_bytes())?;
    write_private(&secrets.join("admin.token"), random_hex(24).as_bytes())?;
    write_private(&secrets.join("audit.key"), audit_key.as_bytes())?;
    let ids: Vec<String> = (1..=workers).map(|i| format!("worker-{i}")).collect();
    for id in &ids {
        write_private(
            &secrets.join(format!("{id}.token")),
            random_hex(24).as_bytes(),
        )?;
    }
    storage::crypto::LocalKeyFile::generate(&secrets.join("root.key"))
        .context("generating the root key")?;

    let (http, grpc, cluster, metrics) = (port, port + 1, port + 2, port + 3);
    let workers_toml: String = ids
        .iter()
        .map(|id| format!("[[workers]]\nid = \"{id}\"\ntoken_file = \"secrets/{id}.token\"\n\n"))
        .collect();
    let coordinator_toml = format!(
        r#"# vaultvec coordinator, embedded default (written by `vaultvec-coordinator init`).
# Paths are relative to this file. Secrets are files with mode 0600, never values here.
data_dir = "coordinator"
default_tier = "free"

[listen]
http = "127.0.0.1:{http}"
grpc = "127.0.0.1:{grpc}"
cluster = "127.0.0.1:{cluster}"
metrics = "127.0.0.1:{metrics}"

[secrets]
pepper_file = "secrets/pepper"
admin_token_file = "secrets/admin.token"
audit_key_file = "secrets/audit.key"
root_key_file = "secrets/root.key"

# Workers dial the cluster listener with plain ws:// on loopback. A worker on another host needs
# TLS: a [cluster_tls] table with cert_file and key_file (see coordinator.example.toml) here, and
# wss:// with ca_file in its own config.
{workers_toml}
[tiers.free]
max_collections = 10
max_points = 1000000
max_stored_bytes = 1073741824
max_dim = 4096
requests_per_second = 1000.0
burst = 2000
max_body_bytes = 33554432

[tiers.pro]
max_collections = 1000
max_points = 100000000
max_stored_bytes = 68719476736
max_dim = 4096
requests_per_second = 100000.0
burst = 100000
max_body_bytes = 67108864
# Two copies of each tenant, on different workers: it keeps serving, with every acknowledged
# write, when one of them is lost.
replicas = 2
"#
    );
    write_private(&config_path, coordinator_toml.as_bytes())?;
    // The worker reads paths as given, so they are written absolute.
    let abs = std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    for id in &ids {
        let worker_toml = format!(
            r#"# vaultvec worker, embedded default (written by `vaultvec-coordinator init`).
worker_id = "{id}"
coordinator_url = "ws://127.0.0.1:{cluster}/v1/cluster"
token_file = "{token}"
data_dir = "{data}"
memory_budget_bytes = 4294967296
max_in_flight = 256
"#,
            token = abs.join(format!("secrets/{id}.token")).display(),
            data = abs.join(id).display(),
        );
        write_private(&dir.join(format!("{id}.toml")), worker_toml.as_bytes())?;
    }

    // The demo tenant and its key, made directly in the database before the server starts.
    let data = dir.join("coordinator");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data)?;
    let store = Store::open(
        &data.join("coordinator.sqlite"),
        AuditKey::new(audit_key.as_bytes()).context("audit key")?,
    )?;
    let root = storage::crypto::LocalKeyFile::open(&secrets.join("root.key"))?;
    let keys = storage::crypto::LocalKeyService::open(Arc::new(root), &data.join("keks"))?;
    let tenant = storage::ids::TenantId::parse("demo")?;
    keys.ensure_tenant(&tenant)?;
    let actor = Actor("system:init".into());
    store.create_tenant(&actor, "demo", "free")?;
    let new = generate();
    let pepper = Pepper::new(pepper.as_bytes()).context("pepper")?;
    store.insert_key(
        &actor,
        &KeyRecord {
            key_id: new.key_id.clone(),
            tenant: "demo".into(),
            scopes: Scopes {
                read: true,
                write: true,
                manage: true,
            },
            collections: None,
            digest: pepper.digest(&new.full),
            is_revoked: false,
        },
        "demo key made by init",
    )?;
    let key = new.full.as_str();
    println!(
        r#"Initialised {dir}.
Demo tenant `demo`, API key (shown once, not stored anywhere):

    export VV_KEY={key}

Try, once the server runs:

    curl -s -X POST http://127.0.0.1:{http}/v1/collections -H "authorization: Bearer $VV_KEY" \
         -H 'content-type: application/json' -d '{{"name":"docs","dim":3,"metric":"cosine"}}'
    curl -s -X PUT http://127.0.0.1:{http}/v1/collections/docs/points -H "authorization: Bearer $VV_KEY" \
         -H 'content-type: application/json' \
         -d '{{"points":[{{"id":1,"vector":[1,0,0],"payload":{{"color":"red"}}}},{{"id":2,"vector":[0,1,0]}}]}}'
    curl -s -X POST http://127.0.0.1:{http}/v1/collections/docs/points/search -H "authorization: Bearer $VV_KEY" \
         -H 'content-type: application/json' -d '{{"vector":[0.9,0.1,0],"top_k":2,"with_payload":true}}'
    grpcurl -plaintext -import-path proto/proto -proto vaultvec/v1/vaultvec.proto \
         -H "authorization: Bearer $VV_KEY" -d '{{"collection":"docs","vector":[0.9,0.1,0],"top_k":2}}' \
         127.0.0.1:{grpc} vaultvec.v1.Points/Search

Admin API: the token is in {dir}/secrets/admin.token, e.g.
    curl -s http://127.0.0.1:{http}/admin/v1/tenants -H "authorization: Bearer $(cat {dir}/secrets/admin.token)"
"#,
        dir = dir.display()
    );
    Ok(())
}

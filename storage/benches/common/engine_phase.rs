//! The whole engine on the dataset: ingest, seal, reopen, search through `Collection`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use storage::Engine;
use storage::collection::{CollectionConfig, Limits, PointInput, SearchRequest};
use storage::crypto::{DekContext, FileOpener, KeyService, LocalKeyFile, LocalKeyService};
use storage::ids::{CollectionName, PointId, TenantId};
use storage::index::HnswParams;
use storage::sealed::{FileKind, SealedFile};

use super::{Args, Dataset, K, Report, measure, round};

const BATCH: usize = 1000;

pub(crate) fn run(
    data: &Dataset,
    params: HnswParams,
    args: &Args,
    report: &mut Report,
) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("vaultvec-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let res = run_in(&dir, data, params, args, report);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn run_in(
    dir: &std::path::Path,
    data: &Dataset,
    params: HnswParams,
    args: &Args,
    report: &mut Report,
) -> Result<()> {
    let root = LocalKeyFile::generate(&dir.join("root.key"))?;
    let keys = Arc::new(LocalKeyService::open(Arc::new(root), &dir.join("keks"))?);
    let tenant = TenantId::parse("bench")?;
    keys.ensure_tenant(&tenant)?;
    let n = data.n_base();
    // One segment for the whole dataset, like the peers' single index.
    let limits = Limits {
        segment_points: n.max(BATCH),
        max_batch: BATCH,
        index_threads: args.threads,
        ..Limits::default()
    };
    let name = CollectionName::parse("bench")?;
    let config = CollectionConfig {
        dim: data.dim,
        metric: data.metric,
        m: params.m,
        ef_construction: params.ef_construction,
        ef: 64,
    };
    let data_dir = dir.join("data");
    {
        let engine = Engine::open(&data_dir, keys.clone(), limits)?;
        let collection = engine.create_collection(&tenant, &name, config)?;
        let start = Instant::now();
        for (batch, rows) in data.base.chunks(BATCH * data.dim).enumerate() {
            let points = rows
                .chunks_exact(data.dim)
                .enumerate()
                .map(|(i, v)| PointInput {
                    id: PointId::Num((batch * BATCH + i) as u64),
                    vector: v.to_vec(),
                    payload: None,
                })
                .collect();
            collection.upsert(points)?;
            if batch % 20 == 19 {
                eprint!(
                    "\r  ingest: {} / {n} points acknowledged",
                    (batch + 1) * BATCH
                );
            }
        }
        let upsert_s = start.elapsed().as_secs_f64();
        eprintln!(
            "\r  ingest: {n} points acknowledged in {upsert_s:.2} s; waiting for background indexing"
        );
        collection.wait_idle()?;
        let index_s = start.elapsed().as_secs_f64();
        let seal_start = Instant::now();
        collection.flush()?;
        let seal_s = seal_start.elapsed().as_secs_f64();
        eprintln!("  indexed by {index_s:.2} s after the first upsert; sealed in {seal_s:.2} s");
        report.upsert_pps = Some(round(n as f64 / upsert_s, 0));
        report.index_pps = Some(round(n as f64 / index_s, 0));
        report.seal_s = Some(round(seal_s, 3));
    }
    // Decrypt the segment files alone, as the reopen will.
    let coll_dir = data_dir.join("tenants").join("bench").join("bench");
    let mut decrypt_s = 0.0;
    let mut segment_bytes = 0u64;
    let incarnation =
        storage::manifest::Manifest::read(&coll_dir, &tenant, "bench", keys.as_ref())?.incarnation;
    for entry in std::fs::read_dir(&coll_dir)? {
        let path = entry?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("seg-"))
        {
            continue;
        }
        let file = SealedFile::open(&path, FileKind::Segment, &tenant, "bench")?
            .bind_incarnation(incarnation);
        let header = file.header().clone();
        segment_bytes += std::fs::metadata(&path)?.len();
        let dek = keys.decrypt_data_key(
            &tenant,
            DekContext {
                collection: "bench",
                file_id: header.file_id,
            },
            &header.wrapped_dek,
        )?;
        let opener = FileOpener::new(dek);
        let start = Instant::now();
        for section in &header.sections {
            std::hint::black_box(file.read_section(&opener, &tenant, section.id)?);
        }
        decrypt_s += start.elapsed().as_secs_f64();
    }
    let start = Instant::now();
    let engine = Engine::open(&data_dir, keys.clone(), limits)?;
    let collection = engine.collection(&tenant, &name)?;
    let reopen_s = start.elapsed().as_secs_f64();
    eprintln!(
        "  reopened {:.0} MB in {reopen_s:.2} s; decrypting alone took {decrypt_s:.2} s",
        segment_bytes as f64 / 1e6
    );
    report.reopen_s = Some(round(reopen_s, 3));
    report.decrypt_s = Some(round(decrypt_s, 3));
    report.decrypt_gbps = Some(round(segment_bytes as f64 / decrypt_s / 1e9, 2));
    report.segment_bytes = Some(segment_bytes);

    let search = |query: &[f32], ef: usize| {
        let req = SearchRequest {
            vector: query.to_vec(),
            top_k: K,
            ef: Some(ef),
            ..Default::default()
        };
        collection
            .search(&req)
            .map(|hits| {
                hits.into_iter()
                    .map(|hit| match hit.id {
                        PointId::Num(id) => id as u32,
                        PointId::Str(_) => u32::MAX,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for &ef in &args.ef {
        let point = measure(data, ef, args.runs, &search);
        eprintln!(
            "  vaultvec engine ef={ef}: {}",
            serde_json::to_string(&point).unwrap_or_default()
        );
        report.engine.push(point);
    }
    Ok(())
}

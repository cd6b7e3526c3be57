//! Collections under concurrency: searches while writes seal segments, writers sharing one group
//! commit, and a tenant whose load waits on the key service not holding up the others.

use std::path::Path;
use std::sync::Arc;

use super::collection::{clustered, engine, limits, name, search};
use super::{keys, tenant};
use crate::Engine;
use crate::collection::{CollectionConfig, Limits, PointInput};
use crate::crypto::LocalKeyService;
use crate::ids::PointId;
use crate::index::Metric;

#[test]
fn searches_run_while_writes_seal_segments() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let engine = engine(
        dir.path(),
        &keys,
        Limits {
            segment_points: 500,
            max_batch: 100,
            ..limits()
        },
    );
    let c = engine
        .create_collection(
            &tenant("a"),
            &name("docs"),
            CollectionConfig::new(16, Metric::Cosine),
        )
        .unwrap();
    let vectors = clustered(77, 3000, 16, 10);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let hits = search(&c, &vectors[n % vectors.len()], 10, None);
                assert!(hits.windows(2).all(|w| w[0].1 <= w[1].1));
                n += 1;
            }
            n
        });
        for (chunk_idx, chunk) in vectors.chunks(100).enumerate() {
            let inputs = chunk
                .iter()
                .enumerate()
                .map(|(i, v)| PointInput {
                    id: PointId::Num((chunk_idx * 100 + i) as u64),
                    vector: v.clone(),
                    payload: None,
                })
                .collect();
            c.upsert(inputs).unwrap();
            let probe = chunk_idx * 100 + 50;
            assert_eq!(
                search(&c, &vectors[probe], 1, None)[0].0,
                PointId::Num(probe as u64)
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
    c.wait_idle().unwrap();
    assert_eq!(c.count(None), 3000);
    assert!(c.info().sealed_segments >= 5);
}

/// (is closed, syncs waiting) and the condition variable both sides wait on.
type Gate = Arc<(parking_lot::Mutex<(bool, usize)>, parking_lot::Condvar)>;

/// A disk whose WAL fsyncs wait at a gate the test opens.
#[derive(Clone, Default)]
struct GateDisk {
    gate: Gate,
}

struct GateFile {
    inner: Box<dyn crate::disk::DiskFile>,
    gate: Option<Gate>,
}

impl crate::disk::DiskFile for GateFile {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.append(bytes)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        if let Some(gate) = &self.gate {
            let mut state = gate.0.lock();
            state.1 += 1;
            gate.1.notify_all();
            while state.0 {
                gate.1.wait(&mut state);
            }
            state.1 -= 1;
        }
        self.inner.sync()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

impl crate::disk::Disk for GateDisk {
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn crate::disk::DiskFile>> {
        let is_wal = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("wal-");
        Ok(Box::new(GateFile {
            inner: crate::disk::StdDisk.create(path)?,
            gate: is_wal.then(|| self.gate.clone()),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        crate::disk::StdDisk.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        crate::disk::StdDisk.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        crate::disk::StdDisk.sync_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        crate::disk::StdDisk.create_dir_all(dir)
    }
}

#[test]
fn concurrent_writers_share_one_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a"]);
    let t = tenant("a");
    let disk = GateDisk::default();
    let engine = Engine::open_with_disk(
        &dir.path().join("data"),
        keys.clone(),
        limits(),
        Arc::new(disk.clone()),
    )
    .unwrap();
    let c = engine
        .create_collection(&t, &name("docs"), CollectionConfig::new(4, Metric::L2))
        .unwrap();
    let point = |i: u64| PointInput {
        id: PointId::Num(i),
        vector: vec![i as f32, 1.0, 2.0, 3.0],
        payload: None,
    };
    c.upsert(vec![point(0)]).unwrap(); // creates the WAL while the gate is open
    disk.gate.0.lock().0 = true;
    std::thread::scope(|scope| {
        let leader = scope.spawn(|| c.upsert(vec![point(1)]));
        // Wait until the leader holds the writer lock and is parked in its fsync.
        {
            let mut state = disk.gate.0.lock();
            while state.1 == 0 {
                disk.gate.1.wait(&mut state);
            }
        }
        // These seven queue behind it.
        let followers: Vec<_> = (2..9)
            .map(|i| {
                let c = &c;
                scope.spawn(move || c.upsert(vec![point(i)]))
            })
            .collect();
        while c.queued_writes() < 7 {
            std::thread::yield_now();
        }
        disk.gate.0.lock().0 = false;
        disk.gate.1.notify_all();
        leader.join().unwrap().unwrap();
        for follower in followers {
            follower.join().unwrap().unwrap();
        }
    });
    assert_eq!(c.count(None), 9);
    drop(c);
    drop(engine);
    // Three frames: the first write, the leader's, and one for all seven followers.
    let coll_dir = dir.path().join("data/tenants/a/docs");
    let mut frames = Vec::new();
    for entry in std::fs::read_dir(&coll_dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_prefix("wal-") {
            let id: u64 = id.parse().unwrap();
            let manifest =
                crate::manifest::Manifest::read(&coll_dir, &t, "docs", keys.as_ref()).unwrap();
            crate::wal::replay(
                &coll_dir.join(&name),
                &t,
                "docs",
                id,
                keys.as_ref(),
                manifest.incarnation,
                |ops: Vec<crate::wal::Op>| {
                    frames.push(ops.len());
                    Ok(())
                },
            )
            .unwrap();
        }
    }
    assert_eq!(frames, vec![1, 1, 7]);
    let engine = self::engine(dir.path(), &keys, limits());
    assert_eq!(engine.collection(&t, &name("docs")).unwrap().count(None), 9);
}

/// A key service that parks data-key decryption for one tenant until the test opens the gate.
struct SlowKeys {
    inner: Arc<LocalKeyService>,
    slow: crate::ids::TenantId,
    gate: Gate,
}

impl crate::crypto::KeyService for SlowKeys {
    fn generate_data_key(
        &self,
        tenant: &crate::ids::TenantId,
        ctx: crate::crypto::DekContext<'_>,
    ) -> crate::Result<(crate::crypto::DataKey, crate::crypto::WrappedDek)> {
        self.inner.generate_data_key(tenant, ctx)
    }
    fn decrypt_data_key(
        &self,
        tenant: &crate::ids::TenantId,
        ctx: crate::crypto::DekContext<'_>,
        wrapped: &crate::crypto::WrappedDek,
    ) -> crate::Result<crate::crypto::DataKey> {
        if *tenant == self.slow {
            let mut state = self.gate.0.lock();
            state.1 += 1;
            self.gate.1.notify_all();
            while state.0 {
                self.gate.1.wait(&mut state);
            }
        }
        self.inner.decrypt_data_key(tenant, ctx, wrapped)
    }
    fn rewrap_data_key(
        &self,
        tenant: &crate::ids::TenantId,
        ctx: crate::crypto::DekContext<'_>,
        wrapped: &crate::crypto::WrappedDek,
    ) -> crate::Result<crate::crypto::WrappedDek> {
        self.inner.rewrap_data_key(tenant, ctx, wrapped)
    }
    fn current_kek_version(&self, tenant: &crate::ids::TenantId) -> crate::Result<u32> {
        self.inner.current_kek_version(tenant)
    }
}

#[test]
fn a_tenant_that_is_loading_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["slow", "fast"]);
    let (slow, fast) = (tenant("slow"), tenant("fast"));
    {
        let engine = engine(dir.path(), &keys, limits());
        for t in [&slow, &fast] {
            let c = engine
                .create_collection(t, &name("docs"), CollectionConfig::new(4, Metric::L2))
                .unwrap();
            c.upsert(vec![PointInput {
                id: PointId::Num(1),
                vector: vec![1.0; 4],
                payload: None,
            }])
            .unwrap();
            c.flush().unwrap();
        }
    }
    let gated = Arc::new(SlowKeys {
        inner: keys.clone(),
        slow: slow.clone(),
        gate: Gate::default(),
    });
    gated.gate.0.lock().0 = true;
    let engine = Arc::new(Engine::open(&dir.path().join("data"), gated.clone(), limits()).unwrap());
    let loading = {
        let (engine, slow) = (engine.clone(), slow.clone());
        std::thread::spawn(move || {
            engine
                .collection(&slow, &name("docs"))
                .map(|c| c.count(None))
        })
    };
    {
        let mut state = gated.gate.0.lock();
        while state.1 == 0 {
            gated.gate.1.wait(&mut state);
        }
    }
    // Tenant "slow" is now stuck mid-load; tenant "fast" must still be served.
    let (done, answer) = std::sync::mpsc::channel();
    {
        let (engine, fast) = (engine.clone(), fast.clone());
        std::thread::spawn(move || {
            let _ = done.send(
                engine
                    .collection(&fast, &name("docs"))
                    .map(|c| c.count(None))
                    .ok(),
            );
        });
    }
    // A generous bound, only so that a regression fails instead of hanging the suite.
    let served = answer.recv_timeout(std::time::Duration::from_secs(60));
    gated.gate.0.lock().0 = false;
    gated.gate.1.notify_all();
    assert_eq!(
        served,
        Ok(Some(1)),
        "tenant fast was held up by tenant slow's load"
    );
    assert_eq!(loading.join().unwrap().unwrap(), 1);
}

//! Crashes seen in the files: every prefix of the newest WAL, a child process killed with SIGKILL
//! while it writes, and what a KEK re-wrap changes in the data files.

use super::*;

/// Where each frame of the WAL file `bytes` ends.
fn frame_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = Header::encoded_len(0);
    while let Some(head) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(head.try_into().unwrap()) as usize;
        at += 16 + len;
        assert!(at <= bytes.len(), "the WAL ends inside a frame");
        ends.push(at);
    }
    ends
}

/// The newest WAL file of a collection directory, by file id.
fn newest_wal(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let id: u64 = name.strip_prefix("wal-")?.parse().ok()?;
            Some((id, path))
        })
        .max()
        .expect("a WAL file")
        .1
}

#[test]
fn every_prefix_of_the_newest_wal_opens_with_exactly_its_complete_frames() {
    let seed = seed();
    let dir = scratch();
    let t = tenant(TENANT);
    // No sealing, and a few frames per WAL file, so older WAL files are replayed whole first.
    let limits = Limits {
        segment_points: 1000,
        wal_bytes: 1200,
        ..limits()
    };
    let batch = |version: u64, ids: Range<u64>| -> Vec<(PointId, Point)> {
        ids.map(|id| {
            let point = (vector(seed, id, version), payload(id, version));
            (PointId::Num(id), point)
        })
        .collect()
    };
    // One model per acknowledged batch: states[k] holds the first k batches.
    let mut states = vec![Model::new()];
    {
        let keys = keys(dir.path(), &[TENANT]);
        let engine = Engine::open(&dir.path().join("data"), keys, limits).unwrap();
        let collection = engine
            .create_collection(&t, &collection_name(), config())
            .unwrap();
        for round in 0..4u64 {
            let mut model = states.last().unwrap().clone();
            let points = batch(round, round * 3..round * 3 + 5);
            collection
                .upsert(
                    points
                        .iter()
                        .map(|(id, (vector, payload))| PointInput {
                            id: id.clone(),
                            vector: vector.clone(),
                            payload: payload.clone(),
                        })
                        .collect(),
                )
                .unwrap();
            model.extend(points);
            states.push(model.clone());
            let deleted = [PointId::Num(round * 3 + 1), PointId::Num(500)];
            collection.delete(&deleted).unwrap();
            for id in &deleted {
                model.remove(id);
            }
            states.push(model);
        }
    }
    let collection_dir = dir
        .path()
        .join("data/tenants")
        .join(TENANT)
        .join(COLLECTION);
    let path = newest_wal(&collection_dir);
    let full = std::fs::read(&path).unwrap();
    let ends = frame_ends(&full);
    let n_batches = states.len() - 1;
    assert!(
        (1..n_batches).contains(&ends.len()),
        "seed {seed}: the newest WAL should hold some but not all of the {n_batches} batches, \
         it holds {}",
        ends.len()
    );
    // The batches before the newest WAL's first frame are in older files.
    let first = n_batches - ends.len();
    eprintln!(
        "seed {seed}: cutting {} ({} bytes, {} of {n_batches} batches) at every byte",
        path.display(),
        full.len(),
        ends.len()
    );
    for len in Header::encoded_len(0)..=full.len() {
        std::fs::write(&path, &full[..len]).unwrap();
        let complete = ends.iter().filter(|&&end| end <= len).count();
        let ctx = format!("seed {seed}: WAL {} cut to {len} bytes", path.display());
        let keys = keys(dir.path(), &[TENANT]);
        let engine = Engine::open(&dir.path().join("data"), keys, limits).unwrap();
        let collection = engine
            .collection(&t, &collection_name())
            .unwrap_or_else(|err| panic!("{ctx}: does not open: {err}"));
        check(
            &collection,
            &states[first + complete],
            &Pending::Nothing,
            &ctx,
        );
    }
}

const SIGKILL_DIR_VAR: &str = "VV_SIGKILL_DIR";
const SIGKILL_START_VAR: &str = "VV_SIGKILL_START";
const SIGKILL_SEED_VAR: &str = "VV_SIGKILL_SEED";
/// A child never writes more batches than this, even if its parent is gone.
const SIGKILL_MAX_BATCHES: u64 = 100_000;

/// Batch `batch` of the SIGKILL test: 16 new points.
fn sigkill_batch(seed: u64, batch: u64) -> Vec<(PointId, Point)> {
    let per_batch = limits().max_batch as u64;
    (batch * per_batch..(batch + 1) * per_batch)
        .map(|id| (PointId::Num(id), (vector(seed, id, 0), payload(id, 0))))
        .collect()
}

/// The child half of `sigkill_loses_no_acknowledged_batch`, which runs this test binary again with
/// only this test selected. Returns at once unless that test started it.
#[test]
fn sigkill_child() {
    let Some(dir) = std::env::var_os(SIGKILL_DIR_VAR) else {
        return;
    };
    let var = |name: &str| -> u64 { std::env::var(name).unwrap().parse().unwrap() };
    let (start, seed) = (var(SIGKILL_START_VAR), var(SIGKILL_SEED_VAR));
    let (_keys, engine) = reopen(Path::new(&dir));
    let t = tenant(TENANT);
    let collection = match engine.collection(&t, &collection_name()) {
        Ok(collection) => collection,
        Err(Error::CollectionNotFound(_)) => engine
            .create_collection(&t, &collection_name(), config())
            .unwrap(),
        Err(err) => panic!("the collection does not open: {err}"),
    };
    // Straight to the process's stdout, past the test harness's capture. A write fails once the
    // parent is gone, which ends this loop too.
    let mut stdout = std::io::stdout();
    for batch in start..start + SIGKILL_MAX_BATCHES {
        let points = sigkill_batch(seed, batch)
            .into_iter()
            .map(|(id, (vector, payload))| PointInput {
                id,
                vector,
                payload,
            })
            .collect();
        collection.upsert(points).unwrap();
        writeln!(stdout, "\nACK {batch}").unwrap();
        stdout.flush().unwrap();
    }
}

#[test]
fn sigkill_loses_no_acknowledged_batch() {
    let seed = seed();
    let dir = scratch();
    let t = tenant(TENANT);
    // Acknowledgements to wait for before each kill. A segment holds 4 batches, so kills land at
    // every phase of filling, rotating and sealing; 0 kills the child while it starts and recovers.
    let rounds = [1u64, 5, 0, 3, 4, 9, 2, 6, 13, 1, 7];
    let mut next = 0u64;
    for (round, &k) in rounds.iter().enumerate() {
        let ctx = format!(
            "seed {seed} round {round} (kill after {k} acknowledgements from batch {next})"
        );
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::crash::files::sigkill_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SIGKILL_DIR_VAR, dir.path())
            .env(SIGKILL_START_VAR, next.to_string())
            .env(SIGKILL_SEED_VAR, seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let mut acked = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while (acked.len() as u64) < k {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(batch) = line.strip_prefix("ACK ") {
                acked.push(batch.trim().parse::<u64>().unwrap());
            }
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        drop(lines);
        let stderr = stderr.join().unwrap();
        assert_eq!(
            acked,
            (next..next + k).collect::<Vec<_>>(),
            "{ctx}: the child stopped early ({status}); its stderr:\n{stderr}"
        );

        let (_keys, engine) = reopen(dir.path());
        let collection = match engine.collection(&t, &collection_name()) {
            Ok(collection) => collection,
            // Killed before it created the collection: nothing was acknowledged.
            Err(Error::CollectionNotFound(_)) if next == 0 && k == 0 => continue,
            Err(err) => panic!("{ctx}: the collection does not open: {err}"),
        };
        let stored = read_all(&collection);
        // Every acknowledged batch, and after them whichever batches the child finished before the
        // kill landed (acknowledged to nobody, but each must be whole).
        let mut expected = Model::new();
        let mut batch = 0;
        loop {
            let points = sigkill_batch(seed, batch);
            if batch >= next + k && !stored.contains_key(&points[0].0) {
                break;
            }
            expected.extend(points);
            batch += 1;
        }
        check(&collection, &expected, &Pending::Nothing, &ctx);
        eprintln!("{ctx}: {batch} batches present");
        next = batch;
    }
}

/// Segment and WAL files of a collection directory by name: header and the bytes after it.
fn data_files(dir: &Path) -> BTreeMap<String, (Header, Vec<u8>)> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("seg-") || name.starts_with("wal-") {
            let bytes = std::fs::read(&path).unwrap();
            let header = Header::decode(&bytes, &path).unwrap();
            let body = bytes[Header::encoded_len(header.sections.len())..].to_vec();
            files.insert(name, (header, body));
        }
    }
    files
}

/// INV-07: a KEK re-wrap replaces each data file's wrapped DEK and nothing else.
#[test]
fn a_rewrap_changes_only_the_wrapped_keys_of_data_files() {
    let seed = seed();
    let dir = scratch();
    let t = tenant(TENANT);
    let (keys, engine) = reopen(dir.path());
    let collection = engine
        .create_collection(&t, &collection_name(), config())
        .unwrap();
    let model = upsert_ids(&collection, seed, 0..90);
    collection.wait_idle().unwrap();
    let collection_dir = dir
        .path()
        .join("data/tenants")
        .join(TENANT)
        .join(COLLECTION);
    let before = data_files(&collection_dir);
    assert!(
        before.keys().any(|name| name.starts_with("seg-"))
            && before.keys().any(|name| name.starts_with("wal-")),
        "seed {seed}: expected sealed segments and WAL files, found {:?}",
        before.keys().collect::<Vec<_>>()
    );
    let version = keys.rotate_kek(&t).unwrap();
    collection.rewrap_keys().unwrap();
    let after = data_files(&collection_dir);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "seed {seed}"
    );
    for (name, (header, body)) in &before {
        let (new_header, new_body) = &after[name];
        assert_eq!(
            new_header.wrapped_dek.kek_version, version,
            "seed {seed}: {name}"
        );
        let unchanged = Header {
            wrapped_dek: new_header.wrapped_dek,
            ..header.clone()
        };
        assert_eq!(&unchanged, new_header, "seed {seed}: {name}: header");
        assert!(body == new_body, "seed {seed}: {name}: the data changed");
    }
    keys.destroy_kek(&t, version - 1).unwrap();
    drop(collection);
    drop(engine);
    let (_keys, engine) = reopen(dir.path());
    let collection = engine.collection(&t, &collection_name()).unwrap();
    check(
        &collection,
        &model,
        &Pending::Nothing,
        &format!("seed {seed}"),
    );
}

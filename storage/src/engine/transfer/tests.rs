//! Copying a tenant's files between engines, against hostile names, sizes, listings and files.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::collection::{CollectionConfig, Limits, PointInput};
use crate::crypto::LocalKeyService;
use crate::ids::PointId;
use crate::index::Metric;
use crate::tests::{keys, tenant};

const DIM: usize = 8;

fn limits() -> Limits {
    Limits {
        segment_points: 1000,
        max_batch: 1000,
        index_threads: 1,
        ..Limits::default()
    }
}

fn engine(dir: &Path, keys: &Arc<LocalKeyService>) -> Engine {
    Engine::open(dir, keys.clone(), limits()).unwrap()
}

fn name(raw: &str) -> CollectionName {
    CollectionName::parse(raw).unwrap()
}

fn vector(id: u64) -> Vec<f32> {
    (0..DIM)
        .map(|i| ((id * 31 + i as u64 * 7) % 97) as f32 / 97.0)
        .collect()
}

const GENEROUS: ImportLimits = ImportLimits {
    max_files: 1000,
    max_bytes: 1 << 30,
};

/// A tenant `t` with collection `docs`: 2,500 points written in batches (sealed segments and a
/// WAL), 100 deleted; unloaded. Answers the live ids.
fn filled(engine: &Engine, t: &TenantId) -> Vec<u64> {
    let docs = engine
        .create_collection(t, &name("docs"), CollectionConfig::new(DIM, Metric::L2))
        .unwrap();
    for start in (0..2500u64).step_by(500) {
        let points = (start..start + 500)
            .map(|id| PointInput {
                id: PointId::Num(id),
                vector: vector(id),
                payload: None,
            })
            .collect();
        docs.upsert(points).unwrap();
    }
    let gone: Vec<PointId> = (0..100).map(PointId::Num).collect();
    docs.delete(&gone).unwrap();
    docs.wait_idle().unwrap();
    drop(docs);
    engine.unload_tenant(t).unwrap();
    (100..2500).collect()
}

/// Two engines over one key service in `dir` (`a` and `b`): `source` holding tenant `t` as
/// [`filled`] leaves it, with its `live` ids, and an empty `target`. `dir` is the first field, so
/// a test that takes them apart in this order drops it last.
struct Pair {
    dir: tempfile::TempDir,
    t: TenantId,
    source: Engine,
    live: Vec<u64>,
    target: Engine,
}

fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["t"]);
    let t = tenant("t");
    let source = engine(&dir.path().join("a"), &keys);
    let live = filled(&source, &t);
    let target = engine(&dir.path().join("b"), &keys);
    Pair {
        dir,
        t,
        source,
        live,
        target,
    }
}

/// Copies `from`'s export of `source` into `to`'s import of `target` in pieces of `piece` bytes.
fn copy(
    from: &Engine,
    source: &TenantId,
    to: &Engine,
    target: &TenantId,
    piece: usize,
) -> Vec<ExportFile> {
    let files = from.export_files(source).unwrap();
    to.begin_import(target, GENEROUS).unwrap();
    for file in &files {
        let mut offset = 0u64;
        loop {
            let bytes = from.read_export(source, &file.path, offset, piece).unwrap();
            if bytes.is_empty() {
                break;
            }
            to.write_import(target, &file.path, offset, &bytes).unwrap();
            offset += bytes.len() as u64;
        }
        assert_eq!(offset, file.len, "{} read whole", file.path);
    }
    files
}

fn live_ids(engine: &Engine, t: &TenantId) -> Vec<u64> {
    let docs = engine.collection(t, &name("docs")).unwrap();
    let ids: Vec<PointId> = (0..3000).map(PointId::Num).collect();
    let mut found: Vec<u64> = ids
        .chunks(1000)
        .flat_map(|chunk| docs.get(chunk, false, true).unwrap())
        .map(|r| {
            let PointId::Num(id) = r.id else {
                panic!("numeric ids")
            };
            assert_eq!(r.vector.as_deref(), Some(&vector(id)[..]), "point {id}");
            id
        })
        .collect();
    found.sort_unstable();
    found
}

#[test]
fn a_tenants_files_copied_to_another_engine_serve_every_point() {
    let Pair {
        dir,
        t,
        source,
        live,
        target,
    } = pair();
    let files = copy(&source, &t, &target, &t, 64 << 10);
    assert!(
        files.iter().any(|f| f.path.starts_with("docs/seg-")),
        "{files:?}"
    );
    assert!(files.iter().any(|f| f.path == "docs/MANIFEST"), "{files:?}");
    target.commit_import(&t, &files).unwrap();
    assert_eq!(live_ids(&target, &t), live);
    // The source is untouched, and the staging directory is gone.
    assert_eq!(live_ids(&source, &t), live);
    let names: Vec<String> = std::fs::read_dir(dir.path().join("b/tenants"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["t"]);
}

#[test]
fn an_import_replaces_what_the_tenant_had() {
    let Pair {
        dir: _dir,
        t,
        source,
        live,
        target,
    } = pair();
    let old = target
        .create_collection(&t, &name("stale"), CollectionConfig::new(DIM, Metric::L2))
        .unwrap();
    drop(old);
    target.unload_tenant(&t).unwrap();
    let files = copy(&source, &t, &target, &t, 1 << 20);
    target.commit_import(&t, &files).unwrap();
    let names: Vec<String> = target
        .list_collections(&t)
        .unwrap()
        .into_iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(names, ["docs"]);
    assert_eq!(live_ids(&target, &t), live);
}

#[test]
fn another_tenants_files_do_not_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["a", "b"]);
    let (a, b) = (tenant("a"), tenant("b"));
    let source = engine(&dir.path().join("src"), &keys);
    filled(&source, &a);
    let target = engine(&dir.path().join("dst"), &keys);
    // A's files under B's name: the names pass, the contents do not authenticate.
    let files = copy(&source, &a, &target, &b, 1 << 20);
    target.commit_import(&b, &files).unwrap();
    let err = target
        .collection(&b, &name("docs"))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, Error::CollectionUnavailable { .. }),
        "{err:?}"
    );
}

#[test]
fn an_import_refuses_hostile_names_offsets_and_sizes_before_writing_outside_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["t"]);
    let t = tenant("t");
    let target = engine(dir.path(), &keys);
    target.begin_import(&t, GENEROUS).unwrap();
    let write =
        |path: &str, offset: u64, bytes: &[u8]| target.write_import(&t, path, offset, bytes);
    for path in [
        "../escape",
        "/etc/passwd",
        "docs/../../escape",
        "docs/sub/seg-1",
        "docs/seg-1/",
        "Docs/seg-1",
        "docs/seg-",
        "docs/seg-1a",
        "docs/seg-+1",
        "docs/MANIFEST.tmp",
        "docs/wal-123456789012345678901",
        "docs",
        "",
        "/",
        ".dropped-x/seg-1",
        "docs/./seg-1",
        "docs//seg-1",
        "docs/seg-1\0",
    ] {
        let err = write(path, 0, b"x").unwrap_err();
        assert!(err.is_user_error(), "{path:?}: {err:?}");
    }
    // Offsets: a file starts at 0 and continues where it ended.
    assert!(write("docs/seg-1", 5, b"x").is_err());
    write("docs/seg-1", 0, b"abc").unwrap();
    assert!(write("docs/seg-1", 2, b"x").is_err(), "overlap");
    assert!(write("docs/seg-1", 4, b"x").is_err(), "gap");
    write("docs/seg-1", 3, b"de").unwrap();
    // Limits on files and bytes, set when the import begins (a new begin starts afresh).
    let tight = ImportLimits {
        max_files: 2,
        max_bytes: 10,
    };
    target.begin_import(&t, tight).unwrap();
    write("docs/seg-1", 0, b"abcde").unwrap();
    write("docs/seg-2", 0, b"12345").unwrap();
    assert!(write("docs/seg-3", 0, b"").is_err(), "a third file");
    assert!(write("docs/seg-2", 5, b"6").is_err(), "an eleventh byte");
    // Nothing was written outside the staging directory.
    let mut everything: Vec<String> = Vec::new();
    for entry in walk(dir.path()) {
        everything.push(
            entry
                .strip_prefix(dir.path())
                .unwrap()
                .display()
                .to_string(),
        );
    }
    everything.retain(|p| !p.starts_with("keks") && p != "root.key");
    everything.sort();
    assert_eq!(
        everything,
        [
            "tenants/.import-t/docs/seg-1",
            "tenants/.import-t/docs/seg-2"
        ]
    );
    std::fs::read_dir(dir.path().join("tenants/.import-t/docs")).unwrap();
    target.abort_import(&t).unwrap();
    assert!(!dir.path().join("tenants/.import-t").exists());
    assert!(
        target.write_import(&t, "docs/seg-1", 0, b"x").is_err(),
        "aborted"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_commit_refuses_a_listing_that_does_not_match_what_was_staged() {
    let Pair {
        dir,
        t,
        source,
        live,
        target,
    } = pair();
    let files = copy(&source, &t, &target, &t, 1 << 20);
    let mut flipped = files.clone();
    flipped[0].sha256[0] ^= 1;
    let mut longer = files.clone();
    longer[0].len += 1;
    let mut twice = files.clone();
    twice.push(files[0].clone());
    let manifest_unlisted: Vec<ExportFile> = files
        .iter()
        .filter(|f| f.path != "docs/MANIFEST")
        .cloned()
        .collect();
    let mut extra = files.clone();
    extra.push(ExportFile {
        path: "docs/seg-999".into(),
        len: 0,
        sha256: Sha256::digest(b"").into(),
    });
    let mut hostile = files.clone();
    hostile[0].path = "../escape".into();
    for (what, listing) in [
        ("a flipped digest", flipped),
        ("a wrong length", longer),
        ("a file listed twice", twice),
        ("a staged manifest not listed", manifest_unlisted),
        ("a listed file not staged", extra),
        ("a hostile name", hostile),
    ] {
        let err = target.commit_import(&t, &listing).unwrap_err();
        assert!(err.is_user_error(), "{what}: {err:?}");
        assert!(!dir.path().join("b/tenants/t").exists(), "{what} switched");
    }
    // A collection without its manifest is refused too.
    let no_manifest: Vec<ExportFile> = files
        .iter()
        .filter(|f| f.path != "docs/MANIFEST")
        .cloned()
        .collect();
    target.abort_import(&t).unwrap();
    target.begin_import(&t, GENEROUS).unwrap();
    for file in &no_manifest {
        let bytes = source
            .read_export(&t, &file.path, 0, MAX_PIECE_BYTES)
            .unwrap();
        assert_eq!(
            bytes.len() as u64,
            file.len,
            "small files come in one piece"
        );
        target.write_import(&t, &file.path, 0, &bytes).unwrap();
    }
    let err = target.commit_import(&t, &no_manifest).unwrap_err();
    assert!(err.to_string().contains("MANIFEST"), "{err}");
    // The right listing goes through.
    target.abort_import(&t).unwrap();
    let files = copy(&source, &t, &target, &t, 1 << 20);
    target.commit_import(&t, &files).unwrap();
    assert_eq!(live_ids(&target, &t), live);
}

#[test]
fn a_loaded_tenant_is_neither_exported_nor_replaced_and_links_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["t"]);
    let t = tenant("t");
    let source = engine(&dir.path().join("a"), &keys);
    filled(&source, &t);
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"not the tenant's").unwrap();
    std::os::unix::fs::symlink(&secret, dir.path().join("a/tenants/t/docs/seg-77")).unwrap();
    let files = source.export_files(&t).unwrap();
    assert!(
        !files.iter().any(|f| f.path == "docs/seg-77"),
        "a link is not listed"
    );
    assert!(
        source.read_export(&t, "docs/seg-77", 0, 100).is_err(),
        "nor read"
    );
    source.load_tenant(&t).unwrap();
    assert!(source.export_files(&t).unwrap_err().is_user_error());
    source.begin_import(&t, GENEROUS).unwrap();
    assert!(source.commit_import(&t, &[]).unwrap_err().is_user_error());
}

#[test]
fn an_interrupted_commit_is_undone_or_finished_when_the_engine_opens() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path(), &["t"]);
    let t = tenant("t");
    let root = dir.path().join("tenants");
    let live = {
        let engine = engine(dir.path(), &keys);
        filled(&engine, &t)
    };
    // A crash between the two renames: the old directory aside, none in place, a staging one.
    std::fs::rename(root.join("t"), root.join(".replaced-t")).unwrap();
    std::fs::create_dir_all(root.join(".import-t/docs")).unwrap();
    {
        let engine = engine(dir.path(), &keys);
        assert_eq!(live_ids(&engine, &t), live, "the old directory is back");
    }
    assert!(!root.join(".import-t").exists());
    assert!(!root.join(".replaced-t").exists());
    // A crash after the second rename: the new directory in place, the old one aside.
    std::fs::create_dir_all(root.join(".replaced-t/old")).unwrap();
    {
        let engine = engine(dir.path(), &keys);
        assert_eq!(live_ids(&engine, &t), live);
        assert_eq!(engine.stored_tenants().unwrap(), std::slice::from_ref(&t));
    }
    assert!(!root.join(".replaced-t").exists());
}

/// Writes 500 more points to `t` on `engine` (a new segment, a new manifest) and unloads it.
fn write_more(engine: &Engine, t: &TenantId) -> Vec<u64> {
    let docs = engine.collection(t, &name("docs")).unwrap();
    let points = (2500..3000u64)
        .map(|id| PointInput {
            id: PointId::Num(id),
            vector: vector(id),
            payload: None,
        })
        .collect();
    docs.upsert(points).unwrap();
    docs.wait_idle().unwrap();
    drop(docs);
    engine.unload_tenant(t).unwrap();
    (100..3000).collect()
}

/// Stages whatever `files` the import lacks (by length and digest) from `from`; answers how
/// many were copied.
fn copy_missing(from: &Engine, to: &Engine, t: &TenantId, files: &[ExportFile]) -> usize {
    let staged = to.staged_files(t).unwrap();
    let mut copied = 0;
    for file in files.iter().filter(|f| !staged.contains(f)) {
        let bytes = from.read_export(t, &file.path, 0, MAX_PIECE_BYTES).unwrap();
        to.write_import(t, &file.path, 0, &bytes).unwrap();
        copied += 1;
    }
    copied
}

#[test]
fn a_stale_copy_stages_its_unchanged_files_and_only_the_others_are_copied() {
    let Pair {
        dir: _dir,
        t,
        source,
        live: _,
        target,
    } = pair();
    // The target holds a copy of the tenant as it was; the source then moves on.
    let before = copy(&source, &t, &target, &t, 1 << 20);
    target.commit_import(&t, &before).unwrap();
    let live = write_more(&source, &t);
    let after = source.export_files(&t).unwrap();
    let unchanged: Vec<&ExportFile> = after.iter().filter(|f| before.contains(f)).collect();
    assert!(
        unchanged.iter().any(|f| f.path.starts_with("docs/seg-")),
        "sealed segments do not change: {before:?} / {after:?}"
    );
    assert!(unchanged.len() < after.len(), "something changed");

    target.begin_import(&t, GENEROUS).unwrap();
    let reused = target.reuse_import(&t, &after).unwrap();
    assert_eq!(reused, unchanged.len());
    let staged = target.staged_files(&t).unwrap();
    assert_eq!(staged.iter().collect::<Vec<_>>(), unchanged);
    assert_eq!(
        copy_missing(&source, &target, &t, &after),
        after.len() - unchanged.len()
    );
    target.commit_import(&t, &after).unwrap();
    assert_eq!(live_ids(&target, &t), live);
}

#[test]
fn a_restaged_file_starts_again_and_unlisted_staged_files_are_left_out() {
    let Pair {
        dir,
        t,
        source,
        live,
        target,
    } = pair();
    let files = copy(&source, &t, &target, &t, 1 << 20);
    // A file staged with other contents, then again from offset 0 with its own.
    let seg = files
        .iter()
        .find(|f| f.path.starts_with("docs/seg-"))
        .unwrap();
    target
        .write_import(&t, &seg.path, 0, b"something else")
        .unwrap();
    assert!(!target.staged_files(&t).unwrap().contains(seg));
    assert!(
        target
            .commit_import(&t, &files)
            .unwrap_err()
            .is_user_error()
    );
    let bytes = source
        .read_export(&t, &seg.path, 0, MAX_PIECE_BYTES)
        .unwrap();
    target.write_import(&t, &seg.path, 0, &bytes).unwrap();
    assert!(target.staged_files(&t).unwrap().contains(seg));
    // A staged file the listing does not name is not kept.
    target
        .write_import(&t, "docs/seg-999", 0, b"gone at the source")
        .unwrap();
    target.commit_import(&t, &files).unwrap();
    assert!(!dir.path().join("b/tenants/t/docs/seg-999").exists());
    assert_eq!(live_ids(&target, &t), live);
}

#[test]
fn reusing_local_files_checks_names_digests_and_follows_no_link() {
    let Pair {
        dir,
        t,
        source,
        live: _,
        target,
    } = pair();
    let files = copy(&source, &t, &target, &t, 1 << 20);
    target.commit_import(&t, &files).unwrap();
    // A file of the same length with one bit flipped is not taken.
    let seg = files
        .iter()
        .find(|f| f.path.starts_with("docs/seg-"))
        .unwrap();
    let local = dir.path().join("b/tenants/t").join(&seg.path);
    let mut bytes = std::fs::read(&local).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&local, &bytes).unwrap();
    // A link where a listed file should be is not followed.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"not the tenant's").unwrap();
    std::os::unix::fs::symlink(&secret, dir.path().join("b/tenants/t/docs/seg-77")).unwrap();
    let link = ExportFile {
        path: "docs/seg-77".into(),
        len: 16,
        sha256: Sha256::digest(b"not the tenant's").into(),
    };
    let mut listing = files.clone();
    listing.push(link.clone());
    target.begin_import(&t, GENEROUS).unwrap();
    assert_eq!(target.reuse_import(&t, &listing).unwrap(), files.len() - 1);
    let staged = target.staged_files(&t).unwrap();
    assert!(!staged.contains(seg), "the flipped segment");
    assert!(!staged.iter().any(|f| f.path == link.path), "the link");
    // A hostile name is refused before anything is read.
    let mut hostile = files[0].clone();
    hostile.path = "../../secret".into();
    assert!(
        target
            .reuse_import(&t, &[hostile])
            .unwrap_err()
            .is_user_error()
    );
}

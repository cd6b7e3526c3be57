//! INV-15's battery: every hostile or malformed archive is refused, and the sink never sees a byte
//! of an entry whose name or kind is wrong.

use super::*;

fn key() -> AuditKey {
    AuditKey::new(&[7u8; 32]).expect("key")
}

fn other_key() -> AuditKey {
    AuditKey::new(&[8u8; 32]).expect("key")
}

const LIMITS: Limits = Limits {
    max_files: 10,
    max_bytes: 1 << 20,
};

fn digest(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn meta_of(files: &[(&str, &[u8])]) -> Meta {
    Meta {
        format: FORMAT,
        id: "snap-1".into(),
        tenant: "acme".into(),
        created_ms: 1_700_000_000_000,
        kek_versions: vec![1],
        files: files
            .iter()
            .map(|(path, data)| FileEntry {
                path: (*path).into(),
                len: data.len() as u64,
                sha256: digest(data),
            })
            .collect(),
    }
}

fn signed(meta: &Meta, key: &AuditKey) -> Vec<u8> {
    let bytes = serde_json::to_vec(meta).unwrap();
    serde_json::to_vec(&Signed {
        meta: meta.clone(),
        signature: hex::encode(key.sign_snapshot(&bytes)),
    })
    .unwrap()
}

/// One raw tar entry: a GNU header with exactly these name and link bytes (no checks, as an
/// attacker would write it), then the data padded to a block.
fn entry(out: &mut Vec<u8>, name: &[u8], kind: tar::EntryType, data: &[u8], link: &[u8]) {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o600);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// An archive of a signed description of `listed` followed by `entries` (name, kind, data).
fn archive(listed: &Meta, entries: &[(&[u8], tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    entry(
        &mut out,
        META_NAME.as_bytes(),
        tar::EntryType::Regular,
        &signed(listed, &key()),
        b"",
    );
    for (name, kind, data) in entries {
        entry(&mut out, name, *kind, data, b"");
    }
    finish(out)
}

const EXPECT: Expect<'static> = Expect {
    tenant: "acme",
    id: Some("snap-1"),
};

/// Reads `bytes`; answers the result and the paths the sink was handed.
fn read(bytes: &[u8]) -> (Result<Meta, ArchiveError>, Vec<String>) {
    let mut handed = Vec::new();
    let result = read_archive(bytes, &key(), LIMITS, &EXPECT, |file, reader| {
        handed.push(file.path.clone());
        std::io::copy(reader, &mut std::io::sink())?;
        Ok(())
    });
    (result, handed)
}

fn refusal(bytes: &[u8]) -> String {
    match read(bytes).0 {
        Err(ArchiveError::Refused(why)) => why,
        Err(other) => other.to_string(),
        Ok(_) => panic!("a hostile archive was accepted"),
    }
}

const SEG: &[u8] = b"ciphertext of a segment";
const MANIFEST: &[u8] = b"ciphertext of a manifest";
const REG: tar::EntryType = tar::EntryType::Regular;

fn good_meta() -> Meta {
    meta_of(&[("docs/MANIFEST", MANIFEST), ("docs/seg-1", SEG)])
}

#[test]
fn an_archive_it_wrote_reads_back_with_every_byte() {
    let meta = good_meta();
    let data: BTreeMap<&str, &[u8]> = [("docs/MANIFEST", MANIFEST), ("docs/seg-1", SEG)].into();
    let out = write_archive(Vec::new(), &meta, &key(), |path| {
        Ok(Box::new(data[path]) as Box<dyn Read>)
    })
    .unwrap();
    let mut got = BTreeMap::new();
    let read = read_archive(out.as_slice(), &key(), LIMITS, &EXPECT, |file, reader| {
        let mut v = Vec::new();
        reader.read_to_end(&mut v)?;
        got.insert(file.path.clone(), v);
        Ok(())
    })
    .unwrap();
    assert_eq!(read, meta);
    assert_eq!(got["docs/MANIFEST"], MANIFEST);
    assert_eq!(got["docs/seg-1"], SEG);
}

#[test]
fn names_that_climb_out_or_are_absolute_are_refused_before_the_sink() {
    for name in [
        &b"files/../../etc/passwd"[..],
        b"files/docs/../seg-1",
        b"/etc/passwd",
        b"files//docs/seg-1",
        b"files/docs/seg-1/../seg-1",
        b"files/docs/sub/seg-1",
        b"files/docs/notes.txt",
        b"files/Docs!/seg-1",
        b"docs/seg-1",
        b"files/docs/seg-\xff",
    ] {
        let meta = meta_of(&[("docs/seg-1", SEG)]);
        let bytes = archive(&meta, &[(name, REG, SEG)]);
        let (result, handed) = read(&bytes);
        assert!(
            matches!(result, Err(ArchiveError::Refused(_))),
            "{:?} was not refused",
            String::from_utf8_lossy(name)
        );
        assert!(handed.is_empty(), "the sink saw {handed:?}");
    }
}

#[test]
fn links_devices_fifos_directories_and_extension_headers_are_refused() {
    use tar::EntryType::*;
    for kind in [
        Symlink,
        Link,
        Char,
        Block,
        Fifo,
        Directory,
        GNULongName,
        GNULongLink,
        XHeader,
        XGlobalHeader,
        GNUSparse,
        Continuous,
    ] {
        let meta = meta_of(&[("docs/seg-1", SEG)]);
        let bytes = archive(&meta, &[(b"files/docs/seg-1", kind, SEG)]);
        let (result, handed) = read(&bytes);
        let Err(ArchiveError::Refused(why)) = result else {
            panic!("{kind:?} was not refused: {result:?}");
        };
        assert!(why.contains("not a regular file"), "{kind:?}: {why}");
        assert!(handed.is_empty());
    }
    // A regular file that names a link target anyway.
    let meta = meta_of(&[("docs/seg-1", SEG)]);
    let mut out = Vec::new();
    entry(
        &mut out,
        META_NAME.as_bytes(),
        REG,
        &signed(&meta, &key()),
        b"",
    );
    entry(&mut out, b"files/docs/seg-1", REG, SEG, b"/etc/shadow");
    assert!(refusal(&finish(out)).contains("link target"));
}

#[test]
fn duplicate_names_are_refused() {
    let meta = good_meta();
    let bytes = archive(
        &meta,
        &[
            (b"files/docs/seg-1", REG, SEG),
            (b"files/docs/seg-1", REG, SEG),
        ],
    );
    assert!(refusal(&bytes).contains("twice"));
    // Listed twice in the description.
    let mut meta = meta_of(&[("docs/seg-1", SEG)]);
    meta.files.push(meta.files[0].clone());
    let bytes = archive(&meta, &[(b"files/docs/seg-1", REG, SEG)]);
    assert!(refusal(&bytes).contains("twice"));
}

#[test]
fn oversized_entries_and_too_many_entries_are_refused() {
    // More bytes than the limit, by the description.
    let mut meta = meta_of(&[("docs/seg-1", SEG)]);
    meta.files[0].len = LIMITS.max_bytes + 1;
    assert!(refusal(&archive(&meta, &[])).contains("at most"));
    // An entry longer than its listed length.
    let meta = meta_of(&[("docs/seg-1", SEG)]);
    let longer = [SEG, b"and more"].concat();
    assert!(refusal(&archive(&meta, &[(b"files/docs/seg-1", REG, &longer)])).contains("holds"));
    // More files than allowed.
    let names: Vec<String> = (0..=LIMITS.max_files)
        .map(|i| format!("docs/seg-{i}"))
        .collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), SEG)).collect();
    assert!(refusal(&archive(&meta_of(&files), &[])).contains("files; at most"));
    // More entries than listed.
    let meta = meta_of(&[("docs/seg-1", SEG)]);
    let bytes = archive(
        &meta,
        &[
            (b"files/docs/seg-1", REG, SEG),
            (b"files/docs/seg-2", REG, SEG),
        ],
    );
    assert!(refusal(&bytes).contains("more entries"));
    // A description larger than any description of the limits is not read.
    let mut out = Vec::new();
    let huge = vec![b' '; 4096 + LIMITS.max_files * 512 + 1];
    entry(&mut out, META_NAME.as_bytes(), REG, &huge, b"");
    assert!(refusal(&finish(out)).contains("at most"));
}

#[test]
fn another_tenants_or_another_snapshots_archive_is_refused() {
    let mut meta = good_meta();
    meta.tenant = "globex".into();
    let bytes = archive(&meta, &[]);
    assert!(refusal(&bytes).contains("tenant globex, not of acme"));
    let mut meta = good_meta();
    meta.id = "snap-2".into();
    assert!(refusal(&archive(&meta, &[])).contains("not snap-1"));
}

#[test]
fn a_changed_or_foreign_description_does_not_verify() {
    // Signed for globex, then edited to name acme.
    let mut meta = good_meta();
    meta.tenant = "globex".into();
    let forged = String::from_utf8(signed(&meta, &key()))
        .unwrap()
        .replace("\"globex\"", "\"acme\"");
    let mut out = Vec::new();
    entry(&mut out, META_NAME.as_bytes(), REG, forged.as_bytes(), b"");
    assert!(refusal(&finish(out)).contains("signature"));
    // Signed by another coordinator's key.
    let mut out = Vec::new();
    entry(
        &mut out,
        META_NAME.as_bytes(),
        REG,
        &signed(&good_meta(), &other_key()),
        b"",
    );
    assert!(refusal(&finish(out)).contains("signature"));
    // Not the description at all, or not first.
    let mut out = Vec::new();
    entry(&mut out, META_NAME.as_bytes(), REG, b"{\"meta\": 1}", b"");
    assert!(refusal(&finish(out)).contains("not valid"));
    let mut out = Vec::new();
    entry(&mut out, b"files/docs/seg-1", REG, SEG, b"");
    entry(
        &mut out,
        META_NAME.as_bytes(),
        REG,
        &signed(&good_meta(), &key()),
        b"",
    );
    assert!(refusal(&finish(out)).contains("first entry"));
    assert!(refusal(&finish(Vec::new())).contains("empty"));
}

#[test]
fn flipped_bits_moved_files_and_missing_files_are_refused() {
    let meta = good_meta();
    let good = archive(
        &meta,
        &[
            (b"files/docs/MANIFEST", REG, MANIFEST),
            (b"files/docs/seg-1", REG, SEG),
        ],
    );
    assert!(read(&good).0.is_ok());
    // Every bit of every file's data, one at a time (the description's bytes are covered by
    // the signature test above).
    let data_start = good.len() - 1024 - 512;
    for at in [data_start, data_start + 3, data_start + SEG.len() - 1] {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[at] ^= 1 << bit;
            assert!(read(&bad).0.is_err(), "flip at {at} bit {bit} was accepted");
        }
    }
    // A flipped bit in a header fails its checksum.
    let mut bad = good.clone();
    let header_at = good.len() - 1024 - 512 - 512;
    bad[header_at + 5] ^= 1;
    assert!(read(&bad).0.is_err());
    // Two files' contents swapped under each other's names.
    let swapped = archive(
        &meta,
        &[
            (b"files/docs/MANIFEST", REG, SEG),
            (b"files/docs/seg-1", REG, MANIFEST),
        ],
    );
    assert!(read(&swapped).0.is_err());
    // A listed file left out; an archive cut in the middle of a file.
    let short = archive(&meta, &[(b"files/docs/MANIFEST", REG, MANIFEST)]);
    assert!(refusal(&short).contains("not in the archive"));
    assert!(read(&good[..good.len() - 1024 - 512 + 4]).0.is_err());
}

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::ids::TenantId;

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn service(dir: &std::path::Path) -> LocalKeyService {
    let root = LocalKeyFile::open_or_generate(&dir.join("root.key")).unwrap();
    LocalKeyService::open(Arc::new(root), &dir.join("keks")).unwrap()
}

fn ctx(file_id: u64) -> DekContext<'static> {
    DekContext {
        collection: "docs",
        file_id,
    }
}

#[test]
fn root_key_file_is_created_0600_and_loose_modes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.key");
    LocalKeyFile::generate(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    LocalKeyFile::open(&path).unwrap();

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = LocalKeyFile::open(&path).err().unwrap().to_string();
    assert!(
        err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, [1u8; 31]).unwrap();
    let err = LocalKeyFile::open(&path).err().unwrap().to_string();
    assert!(err.contains("31 bytes"), "{err}");
}

#[test]
fn data_keys_unwrap_only_in_their_own_context() {
    let dir = tempfile::tempdir().unwrap();
    let keys = service(dir.path());
    let (a, b) = (tenant("a"), tenant("b"));
    keys.ensure_tenant(&a).unwrap();
    keys.ensure_tenant(&b).unwrap();
    let (_dek, wrapped) = keys.generate_data_key(&a, ctx(7)).unwrap();
    keys.decrypt_data_key(&a, ctx(7), &wrapped).unwrap();
    // Another tenant, collection or file: no key.
    assert!(keys.decrypt_data_key(&b, ctx(7), &wrapped).is_err());
    assert!(keys.decrypt_data_key(&a, ctx(8), &wrapped).is_err());
    let other = DekContext {
        collection: "doc",
        file_id: 7,
    };
    assert!(keys.decrypt_data_key(&a, other, &wrapped).is_err());
    // Any flipped bit in the wrapped key: no key.
    for bit in 0..WRAPPED_KEY_BYTES * 8 {
        let mut bad = wrapped;
        bad.bytes[bit / 8] ^= 1 << (bit % 8);
        assert!(
            keys.decrypt_data_key(&a, ctx(7), &bad).is_err(),
            "bit {bit}"
        );
    }
    // A claimed KEK version that does not match fails too.
    let mut bad = wrapped;
    bad.kek_version += 1;
    assert!(keys.decrypt_data_key(&a, ctx(7), &bad).is_err());
}

#[test]
fn keks_persist_and_a_wrong_root_key_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let t = tenant("acme");
    let wrapped = {
        let keys = service(dir.path());
        keys.ensure_tenant(&t).unwrap();
        keys.generate_data_key(&t, ctx(1)).unwrap().1
    };
    let keys = service(dir.path());
    keys.decrypt_data_key(&t, ctx(1), &wrapped).unwrap();

    // A different root key cannot open the tenant's KEK file.
    let other = tempfile::tempdir().unwrap();
    let wrong_root = LocalKeyFile::generate(&other.path().join("root.key")).unwrap();
    let keys = LocalKeyService::open(Arc::new(wrong_root), &dir.path().join("keks")).unwrap();
    assert!(keys.decrypt_data_key(&t, ctx(1), &wrapped).is_err());

    // A truncated KEK file fails closed as well, and other tenants are unaffected.
    let keys = service(dir.path());
    let u = tenant("other");
    keys.ensure_tenant(&u).unwrap();
    let (_, wrapped_u) = keys.generate_data_key(&u, ctx(1)).unwrap();
    let kek_file = dir.path().join("keks/acme.keks");
    let bytes = std::fs::read(&kek_file).unwrap();
    std::fs::write(&kek_file, &bytes[..bytes.len() - 5]).unwrap();
    let keys = service(dir.path());
    assert!(keys.decrypt_data_key(&t, ctx(1), &wrapped).is_err());
    keys.decrypt_data_key(&u, ctx(1), &wrapped_u).unwrap();
}

#[test]
fn rotation_rewraps_and_erasure_destroys() {
    let dir = tempfile::tempdir().unwrap();
    let keys = service(dir.path());
    let t = tenant("acme");
    keys.ensure_tenant(&t).unwrap();
    let (_, old) = keys.generate_data_key(&t, ctx(3)).unwrap();
    assert_eq!(old.kek_version, 1);
    assert_eq!(keys.rotate_kek(&t).unwrap(), 2);
    // Both versions open during the rotation.
    keys.decrypt_data_key(&t, ctx(3), &old).unwrap();
    let new = keys.rewrap_data_key(&t, ctx(3), &old).unwrap();
    assert_eq!(new.kek_version, 2);
    keys.decrypt_data_key(&t, ctx(3), &new).unwrap();
    assert!(
        keys.destroy_kek(&t, 2).is_err(),
        "the current KEK cannot be destroyed"
    );
    keys.destroy_kek(&t, 1).unwrap();
    assert!(keys.decrypt_data_key(&t, ctx(3), &old).is_err());
    assert_eq!(service(dir.path()).kek_versions(&t).unwrap(), vec![2]);

    keys.destroy_tenant(&t).unwrap();
    assert!(keys.decrypt_data_key(&t, ctx(3), &new).is_err());
    assert!(
        service(dir.path())
            .decrypt_data_key(&t, ctx(3), &new)
            .is_err()
    );
    assert!(!dir.path().join("keks/acme.keks").exists());
}

#[test]
fn sealer_never_repeats_a_nonce_and_stops_at_its_budget() {
    let mut sealer = FileSealer::new(DataKey::generate());
    let mut seen = HashSet::with_capacity(1_000_000);
    let mut buf = [0u8; 16];
    for _ in 0..1_000_000 {
        let (counter, _) = sealer.seal_next(b"aad", &mut buf).unwrap();
        assert!(seen.insert(counter), "nonce counter {counter} repeated");
    }
    let mut small = FileSealer::with_budget(DataKey::generate(), 3);
    for _ in 0..3 {
        small.seal_next(b"", &mut buf).unwrap();
    }
    let err = small.seal_next(b"", &mut buf).err().unwrap().to_string();
    assert!(err.contains("budget"), "{err}");
}

#[test]
fn opener_rejects_wrong_position_aad_and_flipped_bits_without_partial_plaintext() {
    let dek = DataKey::generate();
    let dek_copy = DataKey(dek.0.clone());
    let mut sealer = FileSealer::new(dek);
    let opener = FileOpener::new(dek_copy);
    let plain = b"sixteen byte msg and some more bytes".to_vec();
    let mut first = plain.clone();
    let (c0, tag0) = sealer.seal_next(b"ctx", &mut first).unwrap();
    let mut second = plain.clone();
    let (c1, tag1) = sealer.seal_next(b"ctx", &mut second).unwrap();
    assert_ne!(
        first, second,
        "same plaintext must not give the same ciphertext"
    );

    let mut out = vec![0u8; plain.len()];
    assert!(opener.open(c0, b"ctx", &first, &tag0, &mut out));
    assert_eq!(out, plain);
    // The block moved to another position.
    assert!(!opener.open(c1, b"ctx", &first, &tag0, &mut out));
    assert!(out.iter().all(|&b| b == 0), "no partial plaintext");
    assert!(!opener.open(c0, b"ctx2", &first, &tag0, &mut out));
    for bit in 0..first.len() * 8 {
        let mut bad = first.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(!opener.open(c0, b"ctx", &bad, &tag0, &mut out), "bit {bit}");
    }
    let mut bad_tag = tag1;
    bad_tag[0] ^= 1;
    assert!(!opener.open_in_place(c1, b"ctx", &mut second.clone(), &bad_tag));
    assert!(opener.open_in_place(c1, b"ctx", &mut second, &tag1));
    assert_eq!(second, plain);
}

#[derive(Debug, Clone)]
struct BlockCtx {
    tenant: String,
    collection: String,
    file: u64,
    section: u32,
    block: u64,
    version: u16,
}

fn block_ctx() -> impl Strategy<Value = BlockCtx> {
    (
        "[a-c]{1,3}",
        "[a-c]{0,3}",
        0u64..3,
        0u32..3,
        0u64..3,
        0u16..2,
    )
        .prop_map(
            |(tenant, collection, file, section, block, version)| BlockCtx {
                tenant,
                collection,
                file,
                section,
                block,
                version,
            },
        )
}

fn encode(c: &BlockCtx) -> Vec<u8> {
    aad::block(
        &tenant(&c.tenant),
        &c.collection,
        c.file,
        c.section,
        c.block,
        c.version,
    )
    .into_bytes()
}

proptest! {
    /// INV-04: distinct contexts never share an AAD encoding.
    #[test]
    fn aad_is_injective(a in block_ctx(), b in block_ctx()) {
        let same = (&a.tenant, &a.collection, a.file, a.section, a.block, a.version)
            == (&b.tenant, &b.collection, b.file, b.section, b.block, b.version);
        prop_assert_eq!(encode(&a) == encode(&b), same);
    }

    #[test]
    fn aad_domains_never_collide(t in "[a-c]{1,3}", c in "[a-c]{0,3}", x in 0u64..4, y in 0u32..4) {
        let t = tenant(&t);
        let all = [
            aad::kek(&t, y).into_bytes(),
            aad::dek(&t, &c, x, y).into_bytes(),
            aad::block(&t, &c, x, y, x, 1).into_bytes(),
            aad::wal_frame(&t, &c, x, x, 1).into_bytes(),
        ];
        let distinct: HashSet<_> = all.iter().collect();
        prop_assert_eq!(distinct.len(), all.len());
    }
}

#[test]
fn length_prefixing_separates_shifted_fields() {
    let ab_c = aad::dek(&tenant("ab"), "c", 1, 1).into_bytes();
    let a_bc = aad::dek(&tenant("a"), "bc", 1, 1).into_bytes();
    assert_ne!(ab_c, a_bc);
}

// INV-08 / INV-10: key material cannot be printed, serialised, compared or silently copied. A change
// that derives any of these on a key type stops compiling here.
static_assertions::assert_not_impl_any!(DataKey: std::fmt::Debug, std::fmt::Display, serde::Serialize, PartialEq, Clone);
static_assertions::assert_not_impl_any!(Kek: std::fmt::Debug, std::fmt::Display, serde::Serialize, PartialEq, Clone);
static_assertions::assert_not_impl_any!(LocalKeyFile: std::fmt::Debug, std::fmt::Display, serde::Serialize, PartialEq, Clone);
static_assertions::assert_not_impl_any!(FileSealer: std::fmt::Debug, std::fmt::Display, serde::Serialize, PartialEq, Clone);
static_assertions::assert_not_impl_any!(FileOpener: std::fmt::Debug, std::fmt::Display, serde::Serialize, PartialEq, Clone);
static_assertions::assert_not_impl_any!(super::key::KeyBytes: std::fmt::Debug, std::fmt::Display, serde::Serialize, PartialEq);

use std::path::PathBuf;

use proto::vaultvec::cluster::v1::ErrorCode;

use super::Error;

fn code(err: storage::Error) -> ErrorCode {
    Error::from(err).code()
}

#[test]
fn storage_errors_map_to_codes() {
    assert_eq!(
        code(storage::Error::CollectionNotFound("a".into())),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(storage::Error::CollectionExists("a".into())),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        code(storage::Error::DimensionMismatch {
            expected: 2,
            got: 3
        }),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(storage::Error::NonFiniteVector { position: 0 }),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(storage::Error::CollectionUnavailable {
            name: "a".into(),
            reason: "r".into()
        }),
        ErrorCode::Unavailable
    );
    assert_eq!(
        code(storage::Error::TenantNotFound("t".into())),
        ErrorCode::Unavailable
    );
    assert_eq!(
        code(storage::Error::Key("k".into())),
        ErrorCode::Unavailable
    );
    assert_eq!(
        code(storage::Error::Decrypt {
            path: PathBuf::from("/data/t/c/seg-1"),
            what: "block 3".into()
        }),
        ErrorCode::DataLoss
    );
    assert_eq!(
        code(storage::Error::Corrupt {
            path: PathBuf::from("/data/t/c/seg-1"),
            offset: 0,
            reason: "bad magic".into()
        }),
        ErrorCode::DataLoss
    );
    assert_eq!(
        code(storage::Error::Poisoned("c".into())),
        ErrorCode::Internal
    );
}

#[test]
fn messages_of_server_faults_carry_no_paths() {
    let errors = [
        storage::Error::Decrypt {
            path: PathBuf::from("/secret/place/seg-1"),
            what: "block 3".into(),
        },
        storage::Error::Corrupt {
            path: PathBuf::from("/secret/place/seg-1"),
            offset: 7,
            reason: "bad magic".into(),
        },
        storage::Error::Io {
            path: PathBuf::from("/secret/place/wal-1"),
            source: std::io::Error::other("disk on fire"),
        },
        storage::Error::CollectionUnavailable {
            name: "docs".into(),
            reason: "i/o error on /secret/place/x".into(),
        },
    ];
    for err in errors {
        let wire = Error::from(err).to_proto();
        assert!(!wire.message.contains("/secret"), "{}", wire.message);
    }
}

#[test]
fn protocol_refusals_have_their_codes() {
    assert_eq!(Error::Replayed(3).code(), ErrorCode::Replayed);
    assert_eq!(
        Error::NotAssigned("t".into()).code(),
        ErrorCode::NotAssigned
    );
    assert_eq!(
        Error::StaleEpoch {
            tenant: "t".into(),
            current: 2,
            got: 1
        }
        .code(),
        ErrorCode::StaleEpoch
    );
    assert_eq!(Error::Busy(1).code(), ErrorCode::Busy);
    assert_eq!(Error::DeadlineExceeded.code(), ErrorCode::DeadlineExceeded);
    assert_eq!(Error::ShuttingDown.code(), ErrorCode::Unavailable);
    assert_eq!(
        Error::QuotaExceeded("q".into()).code(),
        ErrorCode::ResourceExhausted
    );
}

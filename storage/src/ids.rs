//! Identifier newtypes. Each is parsed once at the boundary, so that what reaches a path is safe.

use std::fmt;

use crate::{Error, Result};

/// Maximum length of a string point id, in bytes.
pub const MAX_STRING_ID_BYTES: usize = 128;

fn check_name(kind: &'static str, raw: &str, max: usize) -> Result<()> {
    let valid_len = (1..=max).contains(&raw.len());
    let valid_bytes = raw
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'));
    let starts_ok = raw
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if valid_len && valid_bytes && starts_ok {
        Ok(())
    } else {
        Err(Error::InvalidId {
            kind,
            reason: format!(
                "{raw:?} must be 1..={max} bytes of [a-z0-9_-], starting with a letter or digit"
            ),
        })
    }
}

/// A tenant's identifier: 1..=63 bytes of `[a-z0-9_-]`; safe to use as a directory name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Parses a tenant id.
    pub fn parse(raw: &str) -> Result<TenantId> {
        check_name("tenant id", raw, 63)?;
        Ok(TenantId(raw.to_owned()))
    }
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A collection's name within its tenant: 1..=63 bytes of `[a-z0-9_-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollectionName(String);

impl CollectionName {
    /// Parses a collection name.
    pub fn parse(raw: &str) -> Result<CollectionName> {
        check_name("collection name", raw, 63)?;
        Ok(CollectionName(raw.to_owned()))
    }
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.0) }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { write!(f, "{:?}", self.0) }
        }
    )*};
}
display_as_str!(TenantId, CollectionName);

/// A point's id: an unsigned integer or a string of at most 128 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum PointId {
    /// A numeric id.
    Num(u64),
    /// A string id, 1..=128 bytes of UTF-8.
    Str(String),
}

impl PointId {
    /// Makes a string id, checking its length.
    pub fn string(raw: &str) -> Result<PointId> {
        if raw.is_empty() || raw.len() > MAX_STRING_ID_BYTES {
            return Err(Error::InvalidId {
                kind: "point id",
                reason: format!(
                    "string ids are 1..={MAX_STRING_ID_BYTES} bytes, got {}",
                    raw.len()
                ),
            });
        }
        Ok(PointId::Str(raw.to_owned()))
    }

    /// Canonical byte encoding: tag 0 + u64 LE, or tag 1 + u8 length + bytes.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            PointId::Num(n) => {
                out.push(0);
                out.extend_from_slice(&n.to_le_bytes());
            }
            PointId::Str(s) => {
                out.push(1);
                out.push(s.len() as u8);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// Decodes one id from the front of `buf`, returning it and the bytes consumed.
    pub fn decode(buf: &[u8]) -> Option<(PointId, usize)> {
        match *buf.first()? {
            0 => {
                let bytes: [u8; 8] = buf.get(1..9)?.try_into().ok()?;
                Some((PointId::Num(u64::from_le_bytes(bytes)), 9))
            }
            1 => {
                let len = *buf.get(1)? as usize;
                if len == 0 || len > MAX_STRING_ID_BYTES {
                    return None;
                }
                let s = std::str::from_utf8(buf.get(2..2 + len)?).ok()?;
                Some((PointId::Str(s.to_owned()), 2 + len))
            }
            _ => None,
        }
    }
}

impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointId::Num(n) => write!(f, "{n}"),
            PointId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_reject_traversal_and_odd_bytes() {
        for bad in ["", "..", "a/b", "A", "-x", "a b", "é", &"x".repeat(64)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} accepted");
            assert!(CollectionName::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "acme-1", "x_y", &"x".repeat(63)] {
            TenantId::parse(good).unwrap();
        }
    }

    #[test]
    fn string_id_bounds() {
        assert!(PointId::string("").is_err());
        assert!(PointId::string(&"x".repeat(129)).is_err());
        PointId::string(&"x".repeat(128)).unwrap();
    }

    proptest! {
        #[test]
        fn point_id_roundtrip(n in any::<u64>(), s in "[a-zA-Z0-9é]{1,40}", pick in any::<bool>()) {
            let id = if pick { PointId::Num(n) } else { PointId::string(&s).unwrap() };
            let mut buf = Vec::new();
            id.encode_into(&mut buf);
            buf.extend_from_slice(b"trailing");
            let (back, used) = PointId::decode(&buf).unwrap();
            prop_assert_eq!(back, id);
            prop_assert_eq!(&buf[used..], b"trailing");
        }

        #[test]
        fn point_id_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = PointId::decode(&bytes);
        }
    }
}

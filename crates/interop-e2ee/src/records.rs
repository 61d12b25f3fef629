//! Byte formats of this crate's own stored records (libsignal's records are stored as
//! libsignal serializes them). Every format starts with a version byte, currently 1.

use libsignal_protocol::IdentityKeyPair;

use crate::store::DeviceAddress;

const VERSION: u8 = 1;

/// A small cursor for parsing stored records; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// `RecordKey::Identity`: `01 | flags (bit 0: verified) | identity key (33 bytes)`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct IdentityRecord {
    pub key: Vec<u8>,
    pub verified: bool,
}

impl IdentityRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION, u8::from(self.verified)];
        out.extend_from_slice(&self.key);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let flags = r.u8()?;
        let key = r.rest();
        if key.len() != 33 {
            return None;
        }
        Some(Self { key: key.to_vec(), verified: flags & 1 == 1 })
    }
}

/// Whether a Kyber pre-key is deleted after use or kept as the last resort.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum KyberKind {
    OneTime,
    LastResort,
}

/// `RecordKey::KyberPreKey`: `01 | kind (0 one-time, 1 last resort) | libsignal record`.
pub(crate) fn encode_kyber(kind: KyberKind, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len() + 2);
    out.push(VERSION);
    out.push(match kind {
        KyberKind::OneTime => 0,
        KyberKind::LastResort => 1,
    });
    out.extend_from_slice(record);
    out
}

pub(crate) fn decode_kyber(bytes: &[u8]) -> Option<(KyberKind, &[u8])> {
    let mut r = Reader(bytes);
    if r.u8()? != VERSION {
        return None;
    }
    let kind = match r.u8()? {
        0 => KyberKind::OneTime,
        1 => KyberKind::LastResort,
        _ => return None,
    };
    Some((kind, r.rest()))
}

/// `RecordKey::LocalIdentity`: `01 | registration id (u32) | device (u8) | account length
/// (u16) | account | libsignal IdentityKeyPair`.
pub(crate) fn encode_local(
    address: &DeviceAddress,
    registration_id: u32,
    key_pair: &IdentityKeyPair,
) -> Vec<u8> {
    let account = address.account().as_bytes();
    let mut out = vec![VERSION];
    out.extend_from_slice(&registration_id.to_be_bytes());
    out.push(address.device());
    out.extend_from_slice(
        &u16::try_from(account.len())
            .expect("DeviceAddress bounds the account length")
            .to_be_bytes(),
    );
    out.extend_from_slice(account);
    out.extend_from_slice(&key_pair.serialize());
    out
}

pub(crate) fn decode_local(bytes: &[u8]) -> Option<(DeviceAddress, u32, IdentityKeyPair)> {
    let mut r = Reader(bytes);
    if r.u8()? != VERSION {
        return None;
    }
    let registration_id = r.u32()?;
    let device = r.u8()?;
    let len = usize::from(r.u16()?);
    let account = std::str::from_utf8(r.take(len)?).ok()?;
    let address = DeviceAddress::new(account, device).ok()?;
    let key_pair = IdentityKeyPair::try_from(r.rest()).ok()?;
    Some((address, registration_id, key_pair))
}

/// `RecordKey::PreKeyMeta`: `01 | next one-time id | next Kyber id | next signed id |
/// current signed id | previous signed id | last-resort Kyber id | previous last-resort
/// Kyber id` (u32 each; 0 = none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PreKeyMeta {
    pub next_prekey: u32,
    pub next_kyber: u32,
    pub next_signed: u32,
    pub signed: u32,
    pub previous_signed: u32,
    pub last_resort: u32,
    pub previous_last_resort: u32,
}

impl PreKeyMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        for v in [
            self.next_prekey,
            self.next_kyber,
            self.next_signed,
            self.signed,
            self.previous_signed,
            self.last_resort,
            self.previous_last_resort,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let meta = Self {
            next_prekey: r.u32()?,
            next_kyber: r.u32()?,
            next_signed: r.u32()?,
            signed: r.u32()?,
            previous_signed: r.u32()?,
            last_resort: r.u32()?,
            previous_last_resort: r.u32()?,
        };
        r.rest().is_empty().then_some(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_truncation() {
        let meta = PreKeyMeta { next_prekey: 5, last_resort: 9, ..Default::default() };
        let bytes = meta.encode();
        assert_eq!(PreKeyMeta::decode(&bytes), Some(meta));
        for n in 0..bytes.len() {
            assert_eq!(PreKeyMeta::decode(&bytes[..n]), None);
        }
        let id = IdentityRecord { key: vec![5; 33], verified: true };
        assert!(IdentityRecord::decode(&id.encode()) == Some(id.clone()));
        assert!(IdentityRecord::decode(&id.encode()[..20]).is_none());
        assert_eq!(
            decode_kyber(&encode_kyber(KyberKind::LastResort, b"x")),
            Some((KyberKind::LastResort, &b"x"[..]))
        );
        assert_eq!(decode_kyber(&[1, 7]), None);

        let kp = IdentityKeyPair::generate(&mut rand::rng());
        let addr = DeviceAddress::new("me", 3).unwrap();
        let local = encode_local(&addr, 77, &kp);
        let (a, r, k) = decode_local(&local).unwrap();
        assert_eq!((a, r), (addr, 77));
        assert_eq!(k.serialize(), kp.serialize());
        for n in 0..12 {
            assert!(decode_local(&local[..n]).is_none());
        }
    }
}

//! Helpers shared by the gatekeeper's integration tests (each test file uses a subset).

#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use interop_enlist::enlist::{Address, Consent, KeyBundle, Prekey, SignedPrekey};
use interop_noise::StaticKeypair;
use rand::SeedableRng;

/// Logs of the servers under test, when `RUST_LOG` asks for them.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn new_keys() -> StaticKeypair {
    StaticKeypair::generate(&mut rand::rngs::StdRng::from_os_rng())
}

/// Syntactically valid Signal key material (the gatekeeper does not verify signatures).
pub fn key_bundle(seed: u8) -> KeyBundle {
    let ec = |tag: u8| {
        let mut k = vec![0x05];
        k.extend([seed ^ tag; 32]);
        k
    };
    let mut kyber = vec![0x08];
    kyber.extend(vec![seed; 1568]);
    KeyBundle {
        identity_key: ec(0x11),
        registration_id: 1000 + u32::from(seed),
        signed_prekey: SignedPrekey { id: 1, public: ec(0x22), signature: vec![seed; 64] },
        kyber_prekey: SignedPrekey { id: 2, public: kyber, signature: vec![seed ^ 0x33; 64] },
        prekeys: (10..13u8).map(|id| Prekey { id: u32::from(id), public: ec(id) }).collect(),
    }
}

pub fn consent() -> Consent {
    Consent { version: "2026-01".into(), read_receipts: true }
}

/// `account[.integrator]@s.interop`.
pub fn account_jid(a: &Address) -> String {
    match &a.integrator {
        Some(i) => format!("{}.{i}@s.interop", a.account),
        None => format!("{}@s.interop", a.account),
    }
}

/// `account[.integrator]:device@s.interop`.
pub fn device_jid(a: &Address) -> String {
    match &a.integrator {
        Some(i) => format!("{}.{i}:{}@s.interop", a.account, a.device),
        None => format!("{}:{}@s.interop", a.account, a.device),
    }
}

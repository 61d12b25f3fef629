//! Our layer (Account over InMemoryStorage: serialized records, one committed batch per
//! operation) next to bare libsignal with its own in-memory store, in the same run.
//!
//! `cargo bench -p interop-e2ee -- --warm-up-time 1 --measurement-time 3`

#![allow(clippy::unwrap_used, missing_docs)]

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use criterion::{BatchSize, Criterion, criterion_group};
use futures::executor::block_on;
use interop_e2ee::test_suite::{KeyServer, addr, new_party, test_now};
use interop_e2ee::{Account, Bundle, DeviceAddress, Enc, InMemoryStorage, PreKeyPolicy};
use libsignal_protocol as ls;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const PLAINTEXT: &[u8] = &[7; 160];

fn now() -> SystemTime {
    test_now()
}

// ---------- ours ----------

struct Ours {
    rng: ChaCha20Rng,
    a: Account<InMemoryStorage>,
    b: Account<InMemoryStorage>,
    aa: DeviceAddress,
    ba: DeviceAddress,
    bundle: Bundle,
}

fn ours() -> Ours {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut server = KeyServer::default();
    let (aa, ba) = (addr("alice", 1), addr("bob", 1));
    let policy = PreKeyPolicy { one_time_target: 5, kyber_target: 5, ..Default::default() };
    let mut a = block_on(new_party(&mut server, aa.clone(), &policy, &mut rng));
    let mut b = block_on(new_party(&mut server, ba.clone(), &policy, &mut rng));
    let bundle = server.bundle(&ba).unwrap();
    block_on(a.process_bundle(&ba, &bundle, now(), &mut rng)).unwrap();
    // Both directions once, so later messages are plain `msg` on established chains.
    let e = block_on(a.encrypt(std::slice::from_ref(&ba), PLAINTEXT, now(), &mut rng)).unwrap();
    block_on(block_on(b.decrypt(&aa, &e[0].1, &mut rng)).unwrap().commit(None)).unwrap();
    let e = block_on(b.encrypt(std::slice::from_ref(&aa), PLAINTEXT, now(), &mut rng)).unwrap();
    block_on(block_on(a.decrypt(&ba, &e[0].1, &mut rng)).unwrap().commit(None)).unwrap();
    let mut bundle = bundle;
    bundle.one_time = None; // reused for every set-up below
    Ours { rng, a, b, aa, ba, bundle }
}

fn ours_encrypt(o: &mut Ours) -> Enc {
    let mut e =
        block_on(o.a.encrypt(std::slice::from_ref(&o.ba), PLAINTEXT, now(), &mut o.rng)).unwrap();
    e.pop().unwrap().1
}

// ---------- bare libsignal ----------

struct Bare {
    rng: ChaCha20Rng,
    a: ls::InMemSignalProtocolStore,
    b: ls::InMemSignalProtocolStore,
    aa: ls::ProtocolAddress,
    ba: ls::ProtocolAddress,
    bundle: ls::PreKeyBundle,
}

fn bare() -> Bare {
    use ls::{GenericSignedPreKey, KyberPreKeyStore, SignedPreKeyStore};
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let dev = ls::DeviceId::new(1).unwrap();
    let (aa, ba) = (
        ls::ProtocolAddress::new("alice".into(), dev),
        ls::ProtocolAddress::new("bob".into(), dev),
    );
    let mut a =
        ls::InMemSignalProtocolStore::new(ls::IdentityKeyPair::generate(&mut rng), 1).unwrap();
    let mut b =
        ls::InMemSignalProtocolStore::new(ls::IdentityKeyPair::generate(&mut rng), 2).unwrap();
    let b_id = b.identity_store.get_identity_key_pair_sync();
    let signed = ls::KeyPair::generate(&mut rng);
    let signed_sig =
        b_id.private_key().calculate_signature(&signed.public_key.serialize(), &mut rng).unwrap();
    let kyber = ls::kem::KeyPair::generate(ls::kem::KeyType::Kyber1024, &mut rng);
    let kyber_sig =
        b_id.private_key().calculate_signature(&kyber.public_key.serialize(), &mut rng).unwrap();
    let ts = ls::Timestamp::from_epoch_millis(1);
    block_on(b.save_signed_pre_key(
        1.into(),
        &ls::SignedPreKeyRecord::new(1.into(), ts, &signed, &signed_sig),
    ))
    .unwrap();
    block_on(b.save_kyber_pre_key(
        1.into(),
        &ls::KyberPreKeyRecord::new(1.into(), ts, &kyber, &kyber_sig),
    ))
    .unwrap();
    let bundle = ls::PreKeyBundle::new(
        2,
        dev,
        None,
        1.into(),
        signed.public_key,
        signed_sig.to_vec(),
        1.into(),
        kyber.public_key.clone(),
        kyber_sig.to_vec(),
        *b_id.identity_key(),
    )
    .unwrap();
    block_on(ls::process_prekey_bundle(
        &ba,
        &mut a.session_store,
        &mut a.identity_store,
        &bundle,
        now(),
        &mut rng,
    ))
    .unwrap();
    let mut bare = Bare { rng, a, b, aa, ba, bundle };
    let m = bare_encrypt_ab(&mut bare);
    bare_decrypt_b(&mut bare, &m);
    let m = block_on(ls::message_encrypt(
        PLAINTEXT,
        &bare.aa,
        &mut bare.b.session_store,
        &mut bare.b.identity_store,
        now(),
        &mut bare.rng,
    ))
    .unwrap();
    block_on(ls::message_decrypt(
        &m,
        &bare.ba,
        &mut bare.a.session_store,
        &mut bare.a.identity_store,
        &mut bare.a.pre_key_store,
        &bare.a.signed_pre_key_store,
        &mut bare.a.kyber_pre_key_store,
        &mut bare.rng,
    ))
    .unwrap();
    bare
}

/// Bare libsignal doing the same job as our API: bytes out.
fn bare_encrypt_ab(b: &mut Bare) -> (bool, Vec<u8>) {
    let m = block_on(ls::message_encrypt(
        PLAINTEXT,
        &b.ba,
        &mut b.a.session_store,
        &mut b.a.identity_store,
        now(),
        &mut b.rng,
    ))
    .unwrap();
    (matches!(m, ls::CiphertextMessage::PreKeySignalMessage(_)), m.serialize().to_vec())
}

/// Bare libsignal doing the same job as our API: bytes in (a `msg` or `pkmsg`).
fn bare_decrypt_b(b: &mut Bare, (prekey, bytes): &(bool, Vec<u8>)) -> Vec<u8> {
    let m = if *prekey {
        ls::CiphertextMessage::PreKeySignalMessage(
            ls::PreKeySignalMessage::try_from(bytes.as_slice()).unwrap(),
        )
    } else {
        ls::CiphertextMessage::SignalMessage(ls::SignalMessage::try_from(bytes.as_slice()).unwrap())
    };
    block_on(ls::message_decrypt(
        &m,
        &b.aa,
        &mut b.b.session_store,
        &mut b.b.identity_store,
        &mut b.b.pre_key_store,
        &b.b.signed_pre_key_store,
        &mut b.b.kyber_pre_key_store,
        &mut b.rng,
    ))
    .unwrap()
}

trait SyncIdentity {
    fn get_identity_key_pair_sync(&self) -> ls::IdentityKeyPair;
}

impl SyncIdentity for ls::InMemIdentityKeyStore {
    fn get_identity_key_pair_sync(&self) -> ls::IdentityKeyPair {
        use ls::IdentityKeyStore;
        block_on(self.get_identity_key_pair()).unwrap()
    }
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("encrypt");
    let mut o = ours();
    g.bench_function("ours", |bch| bch.iter(|| ours_encrypt(&mut o)));
    let mut b = bare();
    g.bench_function("bare_libsignal", |bch| bch.iter(|| bare_encrypt_ab(&mut b)));
    g.finish();

    let mut g = c.benchmark_group("decrypt");
    let o = RefCell::new(ours());
    g.bench_function("ours", |bch| {
        bch.iter_batched(
            || ours_encrypt(&mut o.borrow_mut()),
            |enc| {
                let o = &mut *o.borrow_mut();
                let p = block_on(o.b.decrypt(&o.aa, &enc, &mut o.rng)).unwrap();
                block_on(p.commit(None)).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    let b = RefCell::new(bare());
    g.bench_function("bare_libsignal", |bch| {
        bch.iter_batched(
            || bare_encrypt_ab(&mut b.borrow_mut()),
            |m| bare_decrypt_b(&mut b.borrow_mut(), &m),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // Reference: the part of our overhead that persistence needs (libsignal's own session
    // record codec, which the bare in-memory store never runs).
    let mut g = c.benchmark_group("session_record");
    let b = bare();
    let record =
        block_on(ls::SessionStore::load_session(&b.a.session_store, &b.ba)).unwrap().unwrap();
    let bytes = record.serialize().unwrap();
    g.bench_function("serialize", |bch| bch.iter(|| record.serialize().unwrap()));
    g.bench_function("deserialize", |bch| {
        bch.iter(|| ls::SessionRecord::deserialize(&bytes).unwrap())
    });
    g.finish();
    eprintln!("session record: {} bytes", bytes.len());

    let mut g = c.benchmark_group("session_setup");
    let mut o = ours();
    g.bench_function("ours", |bch| {
        bch.iter(|| block_on(o.a.process_bundle(&o.ba, &o.bundle, now(), &mut o.rng)).unwrap())
    });
    let mut b = bare();
    g.bench_function("bare_libsignal", |bch| {
        bch.iter(|| {
            block_on(ls::process_prekey_bundle(
                &b.ba,
                &mut b.a.session_store,
                &mut b.a.identity_store,
                &b.bundle,
                now(),
                &mut b.rng,
            ))
            .unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = sessions;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = benches
}

/// Instruction-count mode, for a repeatable comparison on a noisy machine:
/// `E2EE_INSTR=ours|bare E2EE_OPS=n valgrind --tool=callgrind <bench binary>` runs `n`
/// round trips (encrypt, then decrypt and commit) after the set-up; the difference between
/// two values of `n` divided by their difference is the cost of one round trip.
fn count_instructions(mode: &str, ops: usize) {
    match mode {
        "ours" => {
            let mut o = ours();
            for _ in 0..ops {
                let enc = ours_encrypt(&mut o);
                let p = block_on(o.b.decrypt(&o.aa, &enc, &mut o.rng)).unwrap();
                block_on(p.commit(None)).unwrap();
            }
        }
        "bare" => {
            let mut b = bare();
            for _ in 0..ops {
                let m = bare_encrypt_ab(&mut b);
                bare_decrypt_b(&mut b, &m);
            }
        }
        other => panic!("E2EE_INSTR must be ours or bare, not {other}"),
    }
}

fn main() {
    if let Ok(mode) = std::env::var("E2EE_INSTR") {
        let ops = std::env::var("E2EE_OPS").ok().and_then(|n| n.parse().ok()).unwrap_or(1000);
        count_instructions(&mode, ops);
        return;
    }
    sessions();
    Criterion::default().configure_from_args().final_summary();
}

//! Deterministic in-process conversations: two and three parties, thousands of messages with
//! random interleaving, drops, duplicates, reorders, restarts, crashes before commit and bad
//! input. Every delivered message decrypts exactly once; duplicates are reported as such.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashSet;

use futures::executor::block_on;
use interop_e2ee::test_suite::{KeyServer, addr, new_party, test_now, text_of, text_transport};
use interop_e2ee::{Account, DeviceAddress, Enc, EncKind, Error, InMemoryStorage, PreKeyPolicy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A message in flight from one party to another.
#[derive(Clone)]
struct InFlight {
    from: usize,
    to: usize,
    id: String,
    body: String,
    enc: Enc,
    sent_at: u64,
}

/// Messages may lag at most this many sends behind: libsignal keeps five receiver chains per
/// session, so older reorders would fall outside its limits.
const WINDOW: u64 = 4;

struct Sim {
    rng: ChaCha20Rng,
    parties: Vec<(DeviceAddress, Option<Account<InMemoryStorage>>)>,
    in_flight: Vec<InFlight>,
    delivered: HashSet<String>,
    sends: u64,
    stats: Stats,
}

#[derive(Default, Debug)]
struct Stats {
    sent: u64,
    decrypted: u64,
    duplicates: u64,
    dropped: u64,
    restarts: u64,
    bad_inputs: u64,
    crashes: u64,
}

impl Sim {
    fn new(seed: u64, names: &[&str]) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut server = KeyServer::default();
        let policy = PreKeyPolicy::default();
        let mut parties = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let a = addr(name, u8::try_from(i + 1).unwrap());
            let acct = block_on(new_party(&mut server, a.clone(), &policy, &mut rng));
            parties.push((a, Some(acct)));
        }
        // The lower-numbered party of each pair starts the session.
        for i in 0..parties.len() {
            for j in i + 1..parties.len() {
                let peer = parties[j].0.clone();
                let bundle = server.bundle(&peer).unwrap();
                let acct = parties[i].1.as_mut().unwrap();
                block_on(acct.process_bundle(&peer, &bundle, test_now(), &mut rng)).unwrap();
            }
        }
        Self {
            rng,
            parties,
            in_flight: Vec::new(),
            delivered: HashSet::new(),
            sends: 0,
            stats: Stats::default(),
        }
    }

    fn acct(&mut self, i: usize) -> &mut Account<InMemoryStorage> {
        self.parties[i].1.as_mut().unwrap()
    }

    fn send(&mut self) {
        let from = self.rng.random_range(0..self.parties.len());
        let peers: Vec<DeviceAddress> = (0..self.parties.len())
            .filter(|&j| j != from)
            .map(|j| self.parties[j].0.clone())
            .collect();
        let ready =
            block_on(self.parties[from].1.as_ref().unwrap().missing_sessions(&peers, test_now()))
                .unwrap();
        let peers: Vec<DeviceAddress> = peers.into_iter().filter(|p| !ready.contains(p)).collect();
        if peers.is_empty() {
            return;
        }
        let id = format!("{from}-{}", self.sends);
        let len = self.rng.random_range(0..300);
        let body: String = (0..len).map(|_| self.rng.random_range('a'..='z')).collect();
        let mut rng = self.rng.clone();
        let encs = block_on(self.acct(from).send(
            &peers,
            text_transport(&id, &body),
            test_now(),
            &mut rng,
        ))
        .unwrap();
        self.rng = rng;
        assert_eq!(encs.len(), peers.len());
        for (peer, enc) in encs {
            let to = self.parties.iter().position(|(a, _)| *a == peer).unwrap();
            self.in_flight.push(InFlight {
                from,
                to,
                id: format!("{id}>{to}"),
                body: body.clone(),
                enc,
                sent_at: self.sends,
            });
            self.stats.sent += 1;
        }
        self.sends += 1;
    }

    /// Delivers `m`; checks that a first delivery decrypts to the sent text and a repeated one
    /// is reported as a duplicate.
    fn deliver(&mut self, m: &InFlight) {
        let sender = self.parties[m.from].0.clone();
        let mut rng = self.rng.clone();
        let first = !self.delivered.contains(&m.id);
        let acct = self.parties[m.to].1.as_mut().unwrap();
        let result = block_on(acct.receive(&sender, &m.enc, &mut rng));
        match (first, result) {
            (true, Ok(received)) => {
                let message = received.message().expect("a message");
                assert_eq!(text_of(message), Some(m.body.as_str()), "{}", m.id);
                assert!(received.events().is_empty());
                block_on(received.commit()).unwrap();
                self.delivered.insert(m.id.clone());
                self.stats.decrypted += 1;
            }
            (false, Err(Error::Duplicate)) => self.stats.duplicates += 1,
            (first, other) => panic!("{} (first delivery: {first}): {other:?}", m.id),
        }
        self.rng = rng;
    }

    fn bad_input(&mut self, m: &InFlight) {
        let mut enc = m.enc.clone();
        match self.rng.random_range(0..3) {
            0 if enc.kind == EncKind::Message => {
                let i = self.rng.random_range(0..enc.ciphertext.len());
                enc.ciphertext[i] ^= 1 << self.rng.random_range(0..8);
            }
            0 | 1 => {
                let n = self.rng.random_range(0..enc.ciphertext.len());
                enc.ciphertext.truncate(n);
            }
            _ => {
                let n = self.rng.random_range(0..200);
                enc.ciphertext = (0..n).map(|_| self.rng.random()).collect();
                enc.kind = [EncKind::PreKey, EncKind::Message][self.rng.random_range(0..2)];
            }
        }
        let sender = self.parties[m.from].0.clone();
        let mut rng = self.rng.clone();
        let acct = self.parties[m.to].1.as_mut().unwrap();
        let result = block_on(acct.receive(&sender, &enc, &mut rng));
        assert!(result.is_err(), "bad input to {} was accepted", m.id);
        self.stats.bad_inputs += 1;
    }

    fn crash_before_commit(&mut self, m: &InFlight) {
        if self.delivered.contains(&m.id) {
            return;
        }
        let sender = self.parties[m.from].0.clone();
        let mut rng = self.rng.clone();
        let acct = self.parties[m.to].1.as_mut().unwrap();
        let received = block_on(acct.receive(&sender, &m.enc, &mut rng)).unwrap();
        drop(received); // the process dies before committing
        self.restart(m.to);
        self.stats.crashes += 1;
    }

    fn restart(&mut self, i: usize) {
        let storage = self.parties[i].1.take().unwrap().into_storage();
        self.parties[i].1 = Some(block_on(Account::open(storage)).unwrap());
        self.stats.restarts += 1;
    }

    fn step(&mut self) {
        // Bounded lag: whatever is about to fall out of the window is delivered or dropped now.
        while let Some(pos) = self.in_flight.iter().position(|m| self.sends - m.sent_at > WINDOW) {
            let m = self.in_flight.remove(pos);
            if self.rng.random_bool(0.9) {
                self.deliver(&m);
            } else {
                self.stats.dropped += 1;
            }
        }
        let roll = self.rng.random_range(0..100);
        if roll < 45 || self.in_flight.is_empty() {
            self.send();
            return;
        }
        let pos = self.rng.random_range(0..self.in_flight.len());
        match roll {
            45..80 => {
                let m = self.in_flight.remove(pos);
                self.deliver(&m);
                if self.rng.random_bool(0.15) {
                    self.in_flight.push(m); // delivered again later: a duplicate
                }
            }
            80..86 => {
                self.in_flight.remove(pos);
                self.stats.dropped += 1;
            }
            86..90 => {
                let i = self.rng.random_range(0..self.parties.len());
                self.restart(i);
            }
            90..97 => {
                let m = self.in_flight[pos].clone();
                self.bad_input(&m);
            }
            _ => {
                let m = self.in_flight[pos].clone();
                self.crash_before_commit(&m);
            }
        }
    }

    fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.step();
        }
        for m in std::mem::take(&mut self.in_flight) {
            self.deliver(&m);
        }
        // Every first delivery became exactly one stored arrival.
        let arrivals: usize =
            self.parties.iter().map(|(_, a)| a.as_ref().unwrap().storage().arrivals().len()).sum();
        assert_eq!(arrivals as u64, self.stats.decrypted);
        assert_eq!(self.delivered.len() as u64, self.stats.decrypted);
        let ids: HashSet<_> = self
            .parties
            .iter()
            .flat_map(|(_, a)| {
                a.as_ref().unwrap().storage().arrivals().iter().map(|x| x.message_id.clone())
            })
            .collect();
        assert!(!ids.is_empty());
    }
}

#[test]
fn two_parties_thousands_of_messages_with_drops_duplicates_reorders_and_restarts() {
    for seed in [1, 2] {
        let mut sim = Sim::new(seed, &["alice", "bob"]);
        sim.run(4000);
        let s = &sim.stats;
        eprintln!("seed {seed}: {s:?}");
        assert!(s.decrypted > 800 && s.duplicates > 50 && s.dropped > 50, "{s:?}");
        assert!(s.restarts > 50 && s.bad_inputs > 50 && s.crashes > 20, "{s:?}");
    }
}

#[test]
fn three_parties_thousands_of_messages_with_drops_duplicates_reorders_and_restarts() {
    let mut sim = Sim::new(3, &["alice", "bob", "carol"]);
    sim.run(3000);
    let s = &sim.stats;
    eprintln!("{s:?}");
    assert!(s.decrypted > 1000 && s.duplicates > 50 && s.dropped > 50, "{s:?}");
}

//! End-to-end encryption for interop messaging, on the official Signal library (libsignal):
//! PQXDH sessions with Kyber pre-keys, the triple ratchet, sender keys, safety numbers; the
//! layered content protobufs; and the `enc` children of `message` stanzas.
//!
//! This crate is AGPL-3.0-only because libsignal is. It is sans-IO: time (`now`) and
//! randomness (`rng`) are parameters, storage is a trait.
//!
//! ```text
//!  send:    proto::Transport ──seal (pad)──▶ Account::encrypt ──▶ [(device, Enc)] ──▶ stanza::message_stanza
//!                                              │ one Batch committed before returning
//!  receive: stanza::parse_incoming ──▶ Account::receive ──▶ Received { message, events }
//!                                        │ decrypt + parse + sender-key distribution
//!                                        └─ Received::commit: new session state + Arrival, one Batch
//!
//!  Account ──libsignal store traits (tx.rs)──▶ Storage (load, commit(Batch))
//!                                                 ├ InMemoryStorage (here)
//!                                                 └ SQLite (interop-client)
//! ```
//!
//! # Example
//! ```
//! use std::time::SystemTime;
//! use futures::executor::block_on;
//! use interop_e2ee::{Account, Bundle, DeviceAddress, InMemoryStorage, PreKeyPolicy, proto};
//!
//! # fn main() -> Result<(), interop_e2ee::Error> { block_on(async {
//! let mut rng = rand::rng();
//! let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
//! let policy = PreKeyPolicy::default();
//! let (alice_addr, bob_addr) = (DeviceAddress::new("alice", 1)?, DeviceAddress::new("bob", 1)?);
//! let (mut alice, _) = Account::create(InMemoryStorage::new(), alice_addr.clone(), &policy, now, &mut rng).await?;
//! let (mut bob, upload) = Account::create(InMemoryStorage::new(), bob_addr.clone(), &policy, now, &mut rng).await?;
//!
//! // The server hands Alice one bundle of Bob's keys.
//! let bundle = Bundle {
//!     registration_id: upload.registration_id,
//!     device: 1,
//!     identity: upload.identity.clone(),
//!     signed_prekey: upload.signed_prekey.clone().unwrap(),
//!     one_time: upload.one_time.first().cloned(),
//!     kyber: upload.kyber_one_time[0].clone(),
//! };
//! alice.process_bundle(&bob_addr, &bundle, now, &mut rng).await?;
//!
//! let text = proto::message::Content::Text(proto::Text { body: "hi".into() });
//! let message = proto::Message { id: "m1".into(), content: Some(text), ..Default::default() };
//! let encs = alice
//!     .send(&[bob_addr.clone()], proto::Transport { message: Some(message), ..Default::default() }, now, &mut rng)
//!     .await?;
//! let node = interop_e2ee::stanza::message_stanza("m1", "bob", interop_e2ee::stanza::MessageType::Text, &encs);
//!
//! // The gatekeeper delivers Bob's copy: his `enc` only, `from` the sender device's address.
//! let mut copy = interop_stanza::stanza::Message::from_node(node).expect("a message stanza");
//! copy.encs = std::mem::take(&mut copy.participants[0].encs);
//! copy.participants.clear();
//! copy.to = None;
//! copy.from = Some("alice:1@s.interop".into());
//! let delivered = copy.into_node();
//! let incoming = interop_e2ee::stanza::parse_incoming(&delivered, &bob_addr)?;
//! let received = bob.receive(&incoming.sender, &incoming.enc, &mut rng).await?;
//! assert!(matches!(
//!     interop_e2ee::content(received.message().unwrap()),
//!     interop_e2ee::Content::Text(t) if t.body == "hi"
//! ));
//! received.commit().await?; // session state and arrival, one transaction
//! assert_eq!(bob.storage().arrivals().len(), 1);
//! # Ok(()) }) }
//! ```
//!
//! # Driving it from tokio
//! libsignal's store futures are not `Send`, so neither are this crate's. A multi-threaded
//! tokio program gives each account to one owner that never moves between threads: a
//! dedicated OS thread (or a `tokio::task::LocalSet` on a current-thread runtime) running the
//! account's operations one at a time, fed by an `mpsc` channel of requests, each with a
//! `oneshot` for the answer (an "account actor"). The storage may itself await async I/O
//! (sqlx) inside; one actor per account is also the single writer [`Storage`] requires.
//!
//! A sketch of such an actor, with a std thread and channel (interop-client uses tokio's
//! channels the same way):
//!
//! ```
//! use std::sync::mpsc;
//! use std::time::SystemTime;
//! use interop_e2ee::{Account, DeviceAddress, InMemoryStorage, PreKeyPolicy};
//!
//! enum Request {
//!     IdentityKey(mpsc::Sender<Vec<u8>>),
//! }
//!
//! let (tx, rx) = mpsc::channel::<Request>();
//! let actor = std::thread::spawn(move || {
//!     futures::executor::block_on(async move {
//!         let address = DeviceAddress::new("alice", 1).expect("valid");
//!         let now = SystemTime::UNIX_EPOCH;
//!         let (account, _upload) = Account::create(
//!             InMemoryStorage::new(), address, &PreKeyPolicy::default(), now, &mut rand::rng(),
//!         )
//!         .await
//!         .expect("fresh store");
//!         // One request at a time: the account never leaves this thread.
//!         for request in rx {
//!             match request {
//!                 Request::IdentityKey(reply) => drop(reply.send(account.identity_key())),
//!             }
//!         }
//!     })
//! });
//! let (reply, answer) = mpsc::channel();
//! tx.send(Request::IdentityKey(reply)).expect("actor running");
//! assert_eq!(answer.recv().expect("answered").len(), 33);
//! drop(tx);
//! actor.join().expect("actor finished");
//! ```
//!
//! # Trust
//! Identity keys are trusted on first use. A changed key is accepted and reported as
//! [`Event::IdentityChanged`] (committed with the message that revealed it); if the user had
//! verified the old key ([`Account::verify_identity`]) messages are refused with
//! [`Error::UntrustedIdentity`] until [`Account::approve_identity`].
//!
//! # What this crate does not do
//! - No cryptography of its own: every primitive is libsignal's.
//! - No I/O: no sockets, no clock, no threads, no persistent storage engine. The SQLite
//!   [`Storage`] lives in interop-client.
//! - No server logic: it does not choose which devices to send to, store uploaded pre-keys or
//!   build bundles; [`PreKeyUpload`] and [`Bundle`] are plain data for that.
//! - No media encryption (interop-media); [`proto::Media`] only carries the descriptor.
//! - No group membership: sender keys are exposed; the group service comes later.

#![forbid(unsafe_code)]

mod account;
mod content;
mod error;
mod prekeys;
mod records;
pub mod stanza;
mod store;
mod tx;

#[cfg(feature = "__test-suite")]
pub mod test_suite;

/// Generated protobuf types of `proto/interop/content.proto`.
///
/// Their derived `Debug` prints content: do not log them.
#[allow(clippy::all, missing_docs, missing_debug_implementations)]
/// The content protobufs (`proto/interop/content.proto`). They carry plaintext, so they have no
/// `Debug` implementation (generated with `skip_debug`): nothing can log a message by accident.
pub mod proto {
    include!("generated/interop.content.v1.rs");
}
mod redacted;

pub use account::{Account, Enc, EncKind, Event, Pending};
pub use content::{
    Content, MAX_TRANSPORT_LEN, PADDING_BLOCK, Received, content, new_message_id, open, seal,
};
pub use error::{Error, Result};
pub use prekeys::{Bundle, OneTimeKey, PreKeyPolicy, PreKeyUpload, SignedKey};
pub use store::{Arrival, Batch, DeviceAddress, InMemoryStorage, RecordKey, Storage, StorageError};

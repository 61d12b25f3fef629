//! Accounts, devices, prekeys and blocks: the gatekeeper's directory.
//!
//! Identities are namespaced: an interop account is keyed by (provider issuer, subject), a
//! native one by its user-visible identifier; the gatekeeper-internal account id is random and
//! opaque. A device is known by the Noise static key it proves on every connection.

use std::future::Future;

use super::DeviceAddress;

/// Native (the gatekeeper's own users) or interop (a third-party provider's users).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// A gatekeeper-native user.
    Native,
    /// A third-party provider's user.
    Interop,
}

impl AccountKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Interop => "interop",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "native" => Some(Self::Native),
            "interop" => Some(Self::Interop),
            _ => None,
        }
    }
}

/// Who an account belongs to, as the outside world names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Native or interop.
    pub kind: AccountKind,
    /// Interop: the provider's issuer URL. Native: empty.
    pub issuer: String,
    /// Interop: the JWT `sub`. Native: the user-visible identifier.
    pub subject: String,
    /// Interop: the provider's integrator id (written into addresses). Native: empty.
    /// Not part of the key: one issuer has one integrator id.
    pub integrator: String,
}

/// A signed prekey (EC or Kyber): id, public key, signature by the identity key. Opaque bytes
/// to the gatekeeper, which only stores and hands them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPrekey {
    /// Key id chosen by the client.
    pub id: u32,
    /// Serialized public key.
    pub public: Vec<u8>,
    /// Signature over the public key.
    pub signature: Vec<u8>,
}

/// A one-time EC prekey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPrekey {
    /// Key id chosen by the client.
    pub id: u32,
    /// Serialized public key.
    pub public: Vec<u8>,
}

/// Keys a device uploads at enlistment and later top-ups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrekeyUpload {
    /// Replaces the current signed EC prekey when set.
    pub signed: Option<SignedPrekey>,
    /// Replaces the last-resort Kyber prekey when set.
    pub kyber_last_resort: Option<SignedPrekey>,
    /// One-time Kyber prekeys to add.
    pub kyber_one_time: Vec<SignedPrekey>,
    /// One-time EC prekeys to add.
    pub one_time: Vec<UploadedPrekey>,
}

/// A device being enlisted or registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// The Noise static key the device proved in the handshake.
    pub noise_key: [u8; 32],
    /// Signal registration id.
    pub registration_id: u32,
    /// Serialized Signal identity public key.
    pub identity_key: Vec<u8>,
    /// Provider-issued opaque push token (interop only).
    pub push_token: Option<String>,
    /// Initial prekeys.
    pub prekeys: PrekeyUpload,
}

/// The result of an enlistment or registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enlisted {
    /// The account and device the caller is now.
    pub address: DeviceAddress,
    /// False when the identity was already enlisted (idempotent repeat).
    pub new_account: bool,
    /// False when this device key was already a device of the account.
    pub new_device: bool,
}

/// What a device's prekey stock looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrekeyCounts {
    /// One-time EC prekeys left.
    pub one_time: u64,
    /// One-time Kyber prekeys left.
    pub kyber_one_time: u64,
}

/// What a sender needs to start a session with one device (PQXDH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The device.
    pub address: DeviceAddress,
    /// Signal registration id.
    pub registration_id: u32,
    /// Serialized identity public key.
    pub identity_key: Vec<u8>,
    /// Current signed EC prekey.
    pub signed: SignedPrekey,
    /// A one-time Kyber prekey, or the last-resort one when none is left.
    pub kyber: SignedPrekey,
    /// True when `kyber` is the last-resort key.
    pub kyber_is_last_resort: bool,
    /// A one-time EC prekey, if any was left (consumed by this fetch).
    pub one_time: Option<UploadedPrekey>,
}

/// The directory of accounts and devices.
pub trait AccountStore: Send + Sync + 'static {
    /// Enlists (interop) or registers (native) `identity` with `device`. Idempotent: the same
    /// identity gets the same account, the same device key the same device; a new device key is
    /// a new device of the same account.
    fn enlist(
        &self,
        identity: &Identity,
        device: NewDevice,
        now_ms: i64,
    ) -> impl Future<Output = crate::Result<Enlisted>> + Send;

    /// The account and device a Noise key belongs to.
    fn device_by_key(
        &self,
        noise_key: &[u8; 32],
    ) -> impl Future<Output = crate::Result<Option<DeviceAddress>>> + Send;

    /// The account of an identity.
    fn account_of(
        &self,
        identity: &Identity,
    ) -> impl Future<Output = crate::Result<Option<String>>> + Send;

    /// Interop accounts whose subject is `subject`, whatever their provider.
    fn interop_accounts_with_subject(
        &self,
        subject: &str,
    ) -> impl Future<Output = crate::Result<Vec<String>>> + Send;

    /// The identity behind an account.
    fn identity_of(
        &self,
        account: &str,
    ) -> impl Future<Output = crate::Result<Option<Identity>>> + Send;

    /// The device numbers of an account, ascending.
    fn devices(&self, account: &str) -> impl Future<Output = crate::Result<Vec<u32>>> + Send;

    /// The push token stored for a device.
    fn push_token(
        &self,
        device: &DeviceAddress,
    ) -> impl Future<Output = crate::Result<Option<String>>> + Send;

    /// Sets the interop opt-in flag (native users opt in explicitly; interop users are opted in
    /// by enlisting).
    fn set_opt_in(
        &self,
        account: &str,
        opted_in: bool,
    ) -> impl Future<Output = crate::Result<bool>> + Send;

    /// Whether an account has opted in to interop.
    fn opted_in(&self, account: &str) -> impl Future<Output = crate::Result<bool>> + Send;

    /// Records the interop consent an account gave at enlistment: the notice version and
    /// whether the user sends read receipts.
    fn set_consent(
        &self,
        account: &str,
        version: &str,
        read_receipts: bool,
    ) -> impl Future<Output = crate::Result<()>> + Send;

    /// The consent on record: (notice version, read receipts), `None` if none was given.
    fn consent(
        &self,
        account: &str,
    ) -> impl Future<Output = crate::Result<Option<(String, bool)>>> + Send;

    /// Deletes an account with its devices, prekeys, blocks and queued messages. Returns false
    /// if it did not exist.
    fn delete_account(&self, account: &str) -> impl Future<Output = crate::Result<bool>> + Send;

    /// Stores prekeys of a device.
    fn upload_prekeys(
        &self,
        device: &DeviceAddress,
        upload: PrekeyUpload,
    ) -> impl Future<Output = crate::Result<()>> + Send;

    /// How many one-time prekeys a device has left.
    fn prekey_counts(
        &self,
        device: &DeviceAddress,
    ) -> impl Future<Output = crate::Result<PrekeyCounts>> + Send;

    /// A bundle for `device`, consuming one one-time EC prekey and one one-time Kyber prekey
    /// atomically (two concurrent claims never get the same key). `None` if the device is
    /// unknown or has no signed prekey.
    fn claim_bundle(
        &self,
        device: &DeviceAddress,
    ) -> impl Future<Output = crate::Result<Option<Bundle>>> + Send;

    /// Records that `blocker` blocks `blocked` (true) or no longer does (false).
    fn set_blocked(
        &self,
        blocker: &str,
        blocked: &str,
        on: bool,
    ) -> impl Future<Output = crate::Result<()>> + Send;

    /// Whether `blocker` blocks `blocked`.
    fn is_blocked(
        &self,
        blocker: &str,
        blocked: &str,
    ) -> impl Future<Output = crate::Result<bool>> + Send;
}

/// The behaviour every [`AccountStore`] backend must show; each backend's tests run it.
#[cfg(test)]
pub(crate) mod suite {
    use super::*;

    pub fn interop(sub: &str) -> Identity {
        Identity {
            kind: AccountKind::Interop,
            issuer: "https://provider.example".into(),
            subject: sub.into(),
            integrator: "acme".into(),
        }
    }

    pub fn native(identifier: &str) -> Identity {
        Identity {
            kind: AccountKind::Native,
            issuer: String::new(),
            subject: identifier.into(),
            integrator: String::new(),
        }
    }

    pub fn device(key: u8, one_time: u32, kyber: u32) -> NewDevice {
        let sig =
            |i: u32| SignedPrekey { id: i, public: vec![key, 1, i as u8], signature: vec![key, 2] };
        NewDevice {
            noise_key: [key; 32],
            registration_id: 1000 + u32::from(key),
            identity_key: vec![5, key],
            push_token: Some(format!("push-{key}")),
            prekeys: PrekeyUpload {
                signed: Some(sig(1)),
                kyber_last_resort: Some(sig(999)),
                kyber_one_time: (10..10 + kyber).map(sig).collect(),
                one_time: (100..100 + one_time)
                    .map(|i| UploadedPrekey { id: i, public: vec![key, 3] })
                    .collect(),
            },
        }
    }

    pub async fn enlistment_is_idempotent_and_devices_are_keys(store: &impl AccountStore) {
        let first = store.enlist(&interop("alice"), device(1, 0, 0), 0).await.unwrap();
        assert!(first.new_account && first.new_device);
        assert_eq!(first.address.device, 1);
        let again = store.enlist(&interop("alice"), device(1, 0, 0), 1).await.unwrap();
        assert_eq!(again.address, first.address);
        assert!(!again.new_account && !again.new_device);
        // A repeat replaces the bundle: the earlier one-time prekeys are gone.
        store.enlist(&interop("alice"), device(1, 5, 0), 1).await.unwrap();
        assert_eq!(store.prekey_counts(&first.address).await.unwrap().one_time, 5);
        store.enlist(&interop("alice"), device(1, 2, 0), 1).await.unwrap();
        assert_eq!(store.prekey_counts(&first.address).await.unwrap().one_time, 2);
        let second = store.enlist(&interop("alice"), device(2, 0, 0), 2).await.unwrap();
        assert_eq!(second.address.account, first.address.account);
        assert_eq!(second.address.device, 2);
        assert!(!second.new_account && second.new_device);
        // Another user is another account; the same subject at another issuer too.
        let bob = store.enlist(&interop("bob"), device(3, 0, 0), 3).await.unwrap();
        assert_ne!(bob.address.account, first.address.account);
        let other_issuer = Identity { issuer: "https://other.example".into(), ..interop("alice") };
        let elsewhere = store.enlist(&other_issuer, device(4, 0, 0), 4).await.unwrap();
        assert_ne!(elsewhere.address.account, first.address.account);
        // A device key cannot move to another account.
        assert!(store.enlist(&interop("bob"), device(1, 0, 0), 5).await.is_err());

        assert_eq!(store.device_by_key(&[2; 32]).await.unwrap(), Some(second.address.clone()));
        assert_eq!(store.device_by_key(&[9; 32]).await.unwrap(), None);
        assert_eq!(store.devices(&first.address.account).await.unwrap(), [1, 2]);
        assert_eq!(
            store.account_of(&interop("alice")).await.unwrap(),
            Some(first.address.account.clone())
        );
        assert_eq!(
            store.identity_of(&first.address.account).await.unwrap(),
            Some(interop("alice"))
        );
        assert_eq!(store.push_token(&second.address).await.unwrap().as_deref(), Some("push-2"));
        assert!(
            store.opted_in(&first.address.account).await.unwrap(),
            "interop users opt in by enlisting"
        );
        let native = Identity {
            kind: AccountKind::Native,
            issuer: String::new(),
            subject: "+15550001".into(),
            integrator: String::new(),
        };
        let n = store.enlist(&native, device(7, 0, 0), 6).await.unwrap();
        assert!(
            !store.opted_in(&n.address.account).await.unwrap(),
            "native users opt in explicitly"
        );
        assert!(store.set_opt_in(&n.address.account, true).await.unwrap());
        assert!(store.opted_in(&n.address.account).await.unwrap());
    }

    pub async fn prekeys_are_consumed_once_then_last_resort(store: &impl AccountStore) {
        let bob = store.enlist(&interop("bob"), device(1, 2, 1), 0).await.unwrap().address;
        assert_eq!(
            store.prekey_counts(&bob).await.unwrap(),
            PrekeyCounts { one_time: 2, kyber_one_time: 1 }
        );
        let b1 = store.claim_bundle(&bob).await.unwrap().unwrap();
        assert_eq!(b1.one_time.as_ref().map(|k| k.id), Some(100));
        assert_eq!((b1.kyber.id, b1.kyber_is_last_resort), (10, false));
        assert_eq!(b1.signed.id, 1);
        assert_eq!(b1.registration_id, 1001);
        let b2 = store.claim_bundle(&bob).await.unwrap().unwrap();
        assert_eq!(b2.one_time.as_ref().map(|k| k.id), Some(101));
        assert_eq!((b2.kyber.id, b2.kyber_is_last_resort), (999, true));
        let b3 = store.claim_bundle(&bob).await.unwrap().unwrap();
        assert_eq!(b3.one_time, None);
        assert!(b3.kyber_is_last_resort);
        assert_eq!(store.prekey_counts(&bob).await.unwrap(), PrekeyCounts::default());
        // Top-up.
        let more = PrekeyUpload {
            one_time: vec![UploadedPrekey { id: 200, public: vec![1] }],
            ..PrekeyUpload::default()
        };
        store.upload_prekeys(&bob, more).await.unwrap();
        assert_eq!(store.prekey_counts(&bob).await.unwrap().one_time, 1);
        assert!(
            store
                .upload_prekeys(&DeviceAddress::new("nobody", 1), PrekeyUpload::default())
                .await
                .is_err()
        );
        assert_eq!(store.claim_bundle(&DeviceAddress::new("nobody", 1)).await.unwrap(), None);
    }

    pub async fn concurrent_claims_never_share_a_key<S: AccountStore>(store: std::sync::Arc<S>) {
        let bob = store.enlist(&interop("bob"), device(1, 10, 0), 0).await.unwrap().address;
        let mut tasks = Vec::new();
        for _ in 0..25 {
            let (store, bob) = (std::sync::Arc::clone(&store), bob.clone());
            tasks.push(tokio::spawn(
                async move { store.claim_bundle(&bob).await.unwrap().unwrap() },
            ));
        }
        let mut ids = Vec::new();
        let mut without = 0;
        for t in tasks {
            match t.await.unwrap().one_time {
                Some(k) => ids.push(k.id),
                None => without += 1,
            }
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 10, "each one-time key handed out exactly once");
        assert_eq!(without, 15);
    }

    pub async fn deleting_an_account_removes_everything(store: &impl AccountStore) {
        let alice = store.enlist(&interop("alice"), device(1, 3, 1), 0).await.unwrap().address;
        let bob = store.enlist(&interop("bob"), device(2, 0, 0), 0).await.unwrap().address;
        store.set_blocked(&bob.account, &alice.account, true).await.unwrap();
        assert!(store.is_blocked(&bob.account, &alice.account).await.unwrap());
        assert!(!store.is_blocked(&alice.account, &bob.account).await.unwrap());
        assert!(store.delete_account(&alice.account).await.unwrap());
        assert!(!store.delete_account(&alice.account).await.unwrap());
        assert_eq!(store.device_by_key(&[1; 32]).await.unwrap(), None);
        assert_eq!(store.account_of(&interop("alice")).await.unwrap(), None);
        assert_eq!(store.prekey_counts(&alice).await.unwrap(), PrekeyCounts::default());
        assert!(!store.is_blocked(&bob.account, &alice.account).await.unwrap());
        // Enlisting again later is a fresh account.
        let back = store.enlist(&interop("alice"), device(1, 0, 0), 9).await.unwrap();
        assert!(back.new_account);
        assert_ne!(back.address.account, alice.account);
        store.set_blocked(&bob.account, &back.address.account, true).await.unwrap();
        assert!(store.is_blocked(&bob.account, &back.address.account).await.unwrap());
        store.set_blocked(&bob.account, &back.address.account, false).await.unwrap();
        assert!(!store.is_blocked(&bob.account, &back.address.account).await.unwrap());
    }
}

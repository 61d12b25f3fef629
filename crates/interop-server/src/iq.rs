//! The gatekeeper's iq services (docs/PROTOCOL.md, "iq"): prekeys (`encrypt`: upload, count,
//! bundle fetch), device lists (`devices`) and contact lookup (`contacts`).
//!
//! Bundle fetches are rate-limited per requester and per (requester, target), as Signal-Server
//! does, so that one-time prekeys cannot be drained; contact lookups per requester, so that the
//! directory cannot be enumerated. A lookup only finds accounts that opted in to interop, and
//! refusals look like "not found".

use interop_stanza::Node;
use interop_stanza::stanza::{
    Condition, Contact, DeviceList, ErrorType, Iq, IqPayload, IqType, Key, PrekeyBundle, SignedKey,
    StanzaError,
};

use crate::Result;
use crate::address::Jid;
use crate::chat::may_reach;
use crate::ratelimit::{Rate, RateLimiter};
use crate::store::{
    AccountKind, AccountStore, DeviceAddress, Identity, PrekeyUpload, SignedPrekey, UploadedPrekey,
};

/// Most addresses or values one request may name.
pub const MAX_ITEMS: usize = 64;

/// Rate limits of the iq services.
#[derive(Debug, Clone, Copy)]
pub struct IqLimits {
    /// Bundle fetches per requesting device.
    pub fetch_per_requester: Rate,
    /// Bundle fetches per (requesting account, target account).
    pub fetch_per_pair: Rate,
    /// Contact lookups (values) per requesting account.
    pub lookups_per_requester: Rate,
}

impl Default for IqLimits {
    fn default() -> Self {
        Self {
            fetch_per_requester: Rate { burst: 200.0, per_minute: 100.0 },
            fetch_per_pair: Rate { burst: 20.0, per_minute: 10.0 },
            lookups_per_requester: Rate { burst: 100.0, per_minute: 20.0 },
        }
    }
}

/// The iq services.
#[derive(Debug)]
pub struct IqService {
    fetch_requester: RateLimiter,
    fetch_pair: RateLimiter,
    lookups: RateLimiter,
}

fn error(iq: &Iq, kind: ErrorType, condition: Condition) -> Node {
    iq.error(StanzaError::new(kind, condition)).into_node()
}

fn signed(k: SignedPrekey) -> SignedKey {
    SignedKey { id: k.id, public: k.public, signature: k.signature }
}

fn stored(k: &SignedKey) -> SignedPrekey {
    SignedPrekey { id: k.id, public: k.public.clone(), signature: k.signature.clone() }
}

impl IqService {
    /// Services with the given limits (in-memory rate tables bounded to 100,000 keys each).
    pub fn new(limits: IqLimits) -> Self {
        Self {
            fetch_requester: RateLimiter::new(limits.fetch_per_requester, 100_000),
            fetch_pair: RateLimiter::new(limits.fetch_per_pair, 100_000),
            lookups: RateLimiter::new(limits.lookups_per_requester, 100_000),
        }
    }

    /// Answers one iq from `device`. Iqs this service does not know get
    /// `feature-not-implemented`; malformed ones `bad-request`.
    pub async fn handle(
        &self,
        store: &impl AccountStore,
        device: &DeviceAddress,
        node: Node,
        now_ms: i64,
    ) -> Result<Node> {
        let id = node.attr("id").unwrap_or_default().to_owned();
        let Ok(iq) = Iq::from_node(node) else {
            let bad = Iq::new(id, IqType::Get, None, IqPayload::None);
            return Ok(error(&bad, ErrorType::Modify, Condition::BadRequest));
        };
        match (&iq.kind, iq.xmlns.as_deref(), &iq.payload) {
            (IqType::Set, Some("encrypt"), IqPayload::PrekeyUpload(up)) => {
                let Some((last_resort, one_time_kyber)) = up.kyber_prekeys.split_first() else {
                    return Ok(error(&iq, ErrorType::Modify, Condition::BadRequest));
                };
                let upload = PrekeyUpload {
                    signed: Some(stored(&up.signed_prekey)),
                    kyber_last_resort: Some(stored(last_resort)),
                    kyber_one_time: one_time_kyber.iter().map(stored).collect(),
                    one_time: up
                        .one_time_prekeys
                        .iter()
                        .map(|k| UploadedPrekey { id: k.id, public: k.public.clone() })
                        .collect(),
                };
                store.upload_prekeys(device, upload).await?;
                Ok(iq.result(IqPayload::None).into_node())
            }
            (IqType::Get, Some("encrypt"), IqPayload::PrekeyCountRequest) => {
                let counts = store.prekey_counts(device).await?;
                let n = u32::try_from(counts.one_time).unwrap_or(u32::MAX);
                Ok(iq.result(IqPayload::PrekeyCount(n)).into_node())
            }
            (IqType::Get, Some("encrypt"), IqPayload::PrekeyFetch(jids)) => {
                self.fetch(store, device, &iq, jids, now_ms).await
            }
            (IqType::Get, Some("devices"), IqPayload::DeviceListRequest(jids)) => {
                if jids.len() > MAX_ITEMS {
                    return Ok(error(&iq, ErrorType::Modify, Condition::PolicyViolation));
                }
                let mut lists = Vec::with_capacity(jids.len());
                for text in jids {
                    let Some(jid) = Jid::parse(text) else {
                        return Ok(error(&iq, ErrorType::Modify, Condition::JidMalformed));
                    };
                    // Unreachable accounts look like accounts without devices.
                    let devices = if may_reach(store, &device.account, &jid.account).await? {
                        store.devices(&jid.account).await?
                    } else {
                        Vec::new()
                    };
                    lists.push(DeviceList { jid: text.clone(), devices });
                }
                Ok(iq.result(IqPayload::DeviceLists(lists)).into_node())
            }
            (IqType::Get, Some("contacts"), IqPayload::ContactLookup(values)) => {
                if values.len() > MAX_ITEMS {
                    return Ok(error(&iq, ErrorType::Modify, Condition::PolicyViolation));
                }
                let mut found = Vec::with_capacity(values.len());
                for value in values {
                    if !self.lookups.check(&device.account, now_ms) {
                        return Ok(error(&iq, ErrorType::Wait, Condition::PolicyViolation));
                    }
                    found.push(Contact {
                        value: value.clone(),
                        jid: self.lookup(store, device, value).await?,
                    });
                }
                Ok(iq.result(IqPayload::Contacts(found)).into_node())
            }
            _ => Ok(error(&iq, ErrorType::Cancel, Condition::FeatureNotImplemented)),
        }
    }

    async fn fetch(
        &self,
        store: &impl AccountStore,
        device: &DeviceAddress,
        iq: &Iq,
        jids: &[String],
        now_ms: i64,
    ) -> Result<Node> {
        if jids.len() > MAX_ITEMS {
            return Ok(error(iq, ErrorType::Modify, Condition::PolicyViolation));
        }
        let requester = format!("{}:{}", device.account, device.device);
        let mut bundles = Vec::with_capacity(jids.len());
        for text in jids {
            let Some(target) = Jid::parse(text).and_then(|j| j.device_address()) else {
                return Ok(error(iq, ErrorType::Modify, Condition::JidMalformed));
            };
            let pair = format!("{}>{}", device.account, target.account);
            if !self.fetch_requester.check(&requester, now_ms)
                || !self.fetch_pair.check(&pair, now_ms)
            {
                return Ok(error(iq, ErrorType::Wait, Condition::PolicyViolation));
            }
            if !may_reach(store, &device.account, &target.account).await? {
                return Ok(error(iq, ErrorType::Cancel, Condition::ItemNotFound));
            }
            let Some(b) = store.claim_bundle(&target).await? else {
                return Ok(error(iq, ErrorType::Cancel, Condition::ItemNotFound));
            };
            bundles.push(PrekeyBundle {
                jid: text.clone(),
                registration_id: b.registration_id,
                identity: b.identity_key,
                signed_prekey: signed(b.signed),
                kyber_prekey: signed(b.kyber),
                one_time_prekey: b.one_time.map(|k| Key { id: k.id, public: k.public }),
            });
        }
        Ok(iq.result(IqPayload::PrekeyBundles(bundles)).into_node())
    }

    /// The address of an opted-in account with the user-visible identifier `value`: a native
    /// account's identifier, or an interop account's subject when exactly one provider has it.
    async fn lookup(
        &self,
        store: &impl AccountStore,
        device: &DeviceAddress,
        value: &str,
    ) -> Result<Option<String>> {
        let native = Identity {
            kind: AccountKind::Native,
            issuer: String::new(),
            subject: value.to_owned(),
            integrator: String::new(),
        };
        let account = match store.account_of(&native).await? {
            Some(a) => a,
            None => match store.interop_accounts_with_subject(value).await?.as_slice() {
                [only] => only.clone(),
                _ => return Ok(None),
            },
        };
        if !may_reach(store, &device.account, &account).await? {
            return Ok(None);
        }
        let integrator =
            store.identity_of(&account).await?.map(|i| i.integrator).filter(|i| !i.is_empty());
        Ok(Some(Jid { account, integrator, device: None }.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use interop_stanza::stanza;

    use super::*;
    use crate::store::QueueLimits;
    use crate::store::accounts::suite::{device, interop, native};
    use crate::store::sqlite::SqliteStore;

    async fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("gk.db"), QueueLimits::default()).await.unwrap();
        (dir, s)
    }

    fn get(xmlns: &str, payload: IqPayload) -> Node {
        Iq::new("q1", IqType::Get, Some(xmlns), payload).into_node()
    }

    fn answer(node: Node) -> Iq {
        let iq = Iq::from_node(node).unwrap();
        assert_eq!(iq.id, "q1");
        iq
    }

    fn condition(iq: &Iq) -> Option<Condition> {
        match &iq.payload {
            IqPayload::Error(e) => Some(e.condition),
            _ => None,
        }
    }

    fn sk(id: u32) -> stanza::SignedKey {
        stanza::SignedKey { id, public: vec![id as u8; 33], signature: vec![7; 64] }
    }

    #[tokio::test]
    async fn prekeys_upload_count_and_fetch() {
        let (_d, s) = open().await;
        let svc = IqService::new(IqLimits::default());
        let alice = s.enlist(&interop("alice"), device(1, 0, 0), 0).await.unwrap().address;
        let bob = s.enlist(&interop("bob"), device(2, 0, 0), 0).await.unwrap().address;
        let upload = stanza::PrekeyUpload {
            registration_id: 42,
            identity: vec![5; 33],
            signed_prekey: sk(1),
            kyber_prekeys: vec![sk(900), sk(901)],
            one_time_prekeys: vec![Key { id: 7, public: vec![1; 33] }],
        };
        let set = Iq::new("q1", IqType::Set, Some("encrypt"), IqPayload::PrekeyUpload(upload))
            .into_node();
        let r = answer(svc.handle(&s, &bob, set, 0).await.unwrap());
        assert_eq!((r.kind, condition(&r)), (IqType::Result, None));
        let r = answer(
            svc.handle(&s, &bob, get("encrypt", IqPayload::PrekeyCountRequest), 0).await.unwrap(),
        );
        assert!(matches!(r.payload, IqPayload::PrekeyCount(1)));

        let bob_dev = Jid::device(&bob, Some("acme")).to_string();
        let fetch = || get("encrypt", IqPayload::PrekeyFetch(vec![bob_dev.clone()]));
        let r = answer(svc.handle(&s, &alice, fetch(), 0).await.unwrap());
        let IqPayload::PrekeyBundles(b) = r.payload else { panic!("{:?}", condition(&r)) };
        assert_eq!(b[0].jid, bob_dev);
        assert_eq!((b[0].signed_prekey.id, b[0].kyber_prekey.id), (1, 901), "one-time kyber first");
        assert_eq!(b[0].one_time_prekey.as_ref().map(|k| k.id), Some(7));
        let r = answer(svc.handle(&s, &alice, fetch(), 0).await.unwrap());
        let IqPayload::PrekeyBundles(b) = r.payload else { panic!() };
        assert_eq!(
            (b[0].kyber_prekey.id, b[0].one_time_prekey.is_none()),
            (900, true),
            "then last resort"
        );
        let nobody = get("encrypt", IqPayload::PrekeyFetch(vec!["nobody:1@s.interop".into()]));
        assert_eq!(
            condition(&answer(svc.handle(&s, &alice, nobody, 0).await.unwrap())),
            Some(Condition::ItemNotFound)
        );
    }

    #[tokio::test]
    async fn bundle_fetches_are_rate_limited_per_pair() {
        let (_d, s) = open().await;
        let limits = IqLimits {
            fetch_per_pair: Rate { burst: 2.0, per_minute: 1.0 },
            ..IqLimits::default()
        };
        let svc = IqService::new(limits);
        let alice = s.enlist(&interop("alice"), device(1, 0, 0), 0).await.unwrap().address;
        let bob = s.enlist(&interop("bob"), device(2, 5, 0), 0).await.unwrap().address;
        let carol = s.enlist(&interop("carol"), device(3, 5, 0), 0).await.unwrap().address;
        let fetch = |d: &DeviceAddress| {
            get("encrypt", IqPayload::PrekeyFetch(vec![Jid::device(d, None).to_string()]))
        };
        for _ in 0..2 {
            assert_eq!(
                condition(&answer(svc.handle(&s, &alice, fetch(&bob), 0).await.unwrap())),
                None
            );
        }
        let r = answer(svc.handle(&s, &alice, fetch(&bob), 0).await.unwrap());
        assert_eq!(condition(&r), Some(Condition::PolicyViolation));
        assert_eq!(
            s.prekey_counts(&bob).await.unwrap().one_time,
            3,
            "the refused fetch consumed nothing"
        );
        assert_eq!(
            condition(&answer(svc.handle(&s, &alice, fetch(&carol), 0).await.unwrap())),
            None,
            "other pairs unaffected"
        );
        assert_eq!(
            condition(&answer(svc.handle(&s, &alice, fetch(&bob), 60_000).await.unwrap())),
            None,
            "refilled"
        );
    }

    #[tokio::test]
    async fn device_lists_and_contact_lookup_respect_opt_in() {
        let (_d, s) = open().await;
        let svc = IqService::new(IqLimits::default());
        let alice = s.enlist(&interop("alice"), device(1, 0, 0), 0).await.unwrap().address;
        let bob = s.enlist(&native("+1555"), device(2, 0, 0), 0).await.unwrap().address;
        s.enlist(&native("+1555"), device(3, 0, 0), 0).await.unwrap();
        let carol = s.enlist(&native("+1666"), device(4, 0, 0), 0).await.unwrap().address;
        s.set_opt_in(&bob.account, true).await.unwrap();
        let lookup = get(
            "contacts",
            IqPayload::ContactLookup(vec![
                "+1555".into(),
                "+1666".into(),
                "+1777".into(),
                "alice".into(),
            ]),
        );
        let r = answer(svc.handle(&s, &alice, lookup.clone(), 0).await.unwrap());
        let IqPayload::Contacts(c) = r.payload else { panic!() };
        let bob_jid = format!("{}@s.interop", bob.account);
        let found: Vec<_> = c.iter().map(|c| (c.value.as_str(), c.jid.clone())).collect();
        assert_eq!(found[0], ("+1555", Some(bob_jid.clone())));
        assert_eq!(found[1], ("+1666", None), "Carol has not opted in: not found");
        assert_eq!(found[2], ("+1777", None));
        // Bob (native, opted in) finds Alice by her provider subject.
        let r = answer(svc.handle(&s, &bob, lookup, 0).await.unwrap());
        let IqPayload::Contacts(c) = r.payload else { panic!() };
        assert_eq!(c[3].jid, Some(format!("{}.acme@s.interop", alice.account)));

        let lists = get(
            "devices",
            IqPayload::DeviceListRequest(vec![
                bob_jid.clone(),
                format!("{}@s.interop", carol.account),
            ]),
        );
        let r = answer(svc.handle(&s, &alice, lists, 0).await.unwrap());
        let IqPayload::DeviceLists(l) = r.payload else { panic!() };
        assert_eq!((l[0].jid.as_str(), l[0].devices.as_slice()), (bob_jid.as_str(), &[1, 2][..]));
        assert!(l[1].devices.is_empty(), "unreachable accounts show no devices");
    }

    #[tokio::test]
    async fn lookups_are_rate_limited_against_enumeration() {
        let (_d, s) = open().await;
        let limits = IqLimits {
            lookups_per_requester: Rate { burst: 3.0, per_minute: 1.0 },
            ..IqLimits::default()
        };
        let svc = IqService::new(limits);
        let alice = s.enlist(&interop("alice"), device(1, 0, 0), 0).await.unwrap().address;
        let many =
            get("contacts", IqPayload::ContactLookup((0..4).map(|i| format!("+1{i}")).collect()));
        assert_eq!(
            condition(&answer(svc.handle(&s, &alice, many, 0).await.unwrap())),
            Some(Condition::PolicyViolation)
        );
        let huge = get(
            "contacts",
            IqPayload::ContactLookup((0..=MAX_ITEMS).map(|i| i.to_string()).collect()),
        );
        assert_eq!(
            condition(&answer(svc.handle(&s, &alice, huge, 0).await.unwrap())),
            Some(Condition::PolicyViolation)
        );
    }

    #[tokio::test]
    async fn malformed_and_unknown_iqs_get_clear_errors() {
        let (_d, s) = open().await;
        let svc = IqService::new(IqLimits::default());
        let alice = s.enlist(&interop("alice"), device(1, 0, 0), 0).await.unwrap().address;
        let bad = Node::new("iq").with_attr("id", "q1").with_attr("type", "sideways");
        assert_eq!(
            condition(&answer(svc.handle(&s, &alice, bad, 0).await.unwrap())),
            Some(Condition::BadRequest)
        );
        let unknown = get("weather", IqPayload::None);
        assert_eq!(
            condition(&answer(svc.handle(&s, &alice, unknown, 0).await.unwrap())),
            Some(Condition::FeatureNotImplemented)
        );
        let bad_jid = get("encrypt", IqPayload::PrekeyFetch(vec!["not-an-address".into()]));
        assert_eq!(
            condition(&answer(svc.handle(&s, &alice, bad_jid, 0).await.unwrap())),
            Some(Condition::JidMalformed)
        );
    }
}

//! Enlistment iqs: round trips and the validation table.

use interop_enlist::Error;
use interop_enlist::enlist::*;
use interop_stanza::Node;

fn bundle() -> KeyBundle {
    let mut identity = vec![0x05];
    identity.extend([1u8; 32]);
    let mut spk = vec![0x05];
    spk.extend([2u8; 32]);
    let mut kyber = vec![0x08];
    kyber.extend(vec![3u8; 1568]);
    KeyBundle {
        identity_key: identity,
        registration_id: 4242,
        signed_prekey: SignedPrekey { id: 1, public: spk.clone(), signature: vec![9; 64] },
        kyber_prekey: SignedPrekey { id: 2, public: kyber, signature: vec![8; 64] },
        prekeys: (10..20).map(|id| Prekey { id, public: spk.clone() }).collect(),
    }
}

fn enlist() -> Request {
    Request::Enlist {
        keys: bundle(),
        consent: Consent { version: "2026-01".into(), read_receipts: true },
        push_token: b"opaque-token".to_vec(),
    }
}

fn address() -> Address {
    Address { account: "a1b2c3".into(), device: 2, integrator: Some("example".into()) }
}

#[test]
fn requests_round_trip() {
    let requests = vec![
        enlist(),
        Request::Status,
        Request::OptOut,
        Request::Register { identifier: "+15551234567".into() },
        Request::Confirm {
            identifier: "+15551234567".into(),
            code: "123456".into(),
            keys: bundle(),
        },
        Request::InteropOptIn { enabled: true },
        Request::InteropOptIn { enabled: false },
    ];
    for r in requests {
        let node = r.to_node("id-1");
        assert_eq!(node.attr("xmlns"), Some(NS));
        let (id, back) = Request::from_node(&node).expect("parses");
        assert_eq!((id.as_str(), &back), ("id-1", &r));
    }
}

#[test]
fn responses_round_trip() {
    let responses = vec![
        Response::Enlisted { address: address(), created: true },
        Response::Enlisted { address: address(), created: false },
        Response::Status(Status::NotEnlisted),
        Response::Status(Status::Enlisted {
            address: Address { integrator: None, ..address() },
            consent: Consent { version: "1".into(), read_receipts: false },
        }),
        Response::OptedOut,
        Response::CodeSent { expires_in: 600 },
        Response::Registered { address: address() },
        Response::InteropOptIn { enabled: true },
        Response::Error(ErrorCode::ConsentRequired),
    ];
    for r in responses {
        let node = r.to_node("x");
        assert_eq!(Response::from_node(&node).expect("parses"), ("x".to_owned(), r));
    }
}

fn enlist_child(f: impl FnOnce(&mut Node)) -> Node {
    let mut iq = enlist().to_node("q");
    if let interop_stanza::Content::Nodes(children) = &mut iq.content {
        f(&mut children[0]);
    }
    iq
}

fn sub(parent: &mut Node, tag: &str) -> usize {
    parent.children().iter().position(|c| c.tag == tag).expect("child present")
}

fn nodes(n: &mut Node) -> &mut Vec<Node> {
    match &mut n.content {
        interop_stanza::Content::Nodes(c) => c,
        _ => panic!("no children"),
    }
}

#[test]
fn invalid_requests_map_to_their_error_code() {
    use ErrorCode::*;
    type Mutate = Box<dyn Fn() -> Node>;
    let cases: Vec<(&str, Mutate, ErrorCode)> = vec![
        ("not an iq", Box::new(|| Node::new("message")), BadRequest),
        (
            "wrong xmlns",
            Box::new(|| enlist().to_node("q").with_attr("xmlns", "jabber:x")),
            BadRequest,
        ),
        (
            "no id",
            Box::new(|| {
                let mut n = enlist().to_node("q");
                n.attrs.retain(|(k, _)| k != "id");
                n
            }),
            BadRequest,
        ),
        ("enlist as get", Box::new(|| enlist().to_node("q").with_attr("type", "get")), BadRequest),
        (
            "two children",
            Box::new(|| {
                let mut n = enlist().to_node("q");
                nodes(&mut n).push(Node::new("status"));
                n
            }),
            BadRequest,
        ),
        (
            "unknown operation",
            Box::new(|| Request::Status.to_node("q").with_children(vec![Node::new("teleport")])),
            BadRequest,
        ),
        ("version 2", Box::new(|| enlist_child(|e| e.set_attr("v", "2"))), UnsupportedVersion),
        (
            "identity key of 32 bytes",
            Box::new(|| {
                enlist_child(|e| {
                    let i = sub(e, "identity");
                    let n = &mut nodes(e)[i];
                    n.content = interop_stanza::Content::Bytes(vec![5; 32]);
                })
            }),
            InvalidIdentityKey,
        ),
        (
            "identity key without 0x05",
            Box::new(|| {
                enlist_child(|e| {
                    let i = sub(e, "identity");
                    nodes(e)[i].content = interop_stanza::Content::Bytes(vec![6; 33]);
                })
            }),
            InvalidIdentityKey,
        ),
        (
            "registration id 0",
            Box::new(|| {
                enlist_child(|e| {
                    let i = sub(e, "identity");
                    nodes(e)[i].set_attr("reg-id", "0");
                })
            }),
            InvalidRegistrationId,
        ),
        (
            "registration id 16381",
            Box::new(|| {
                enlist_child(|e| {
                    let i = sub(e, "identity");
                    nodes(e)[i].set_attr("reg-id", "16381");
                })
            }),
            InvalidRegistrationId,
        ),
        (
            "registration id with a sign",
            Box::new(|| {
                enlist_child(|e| {
                    let i = sub(e, "identity");
                    nodes(e)[i].set_attr("reg-id", "+12");
                })
            }),
            InvalidRegistrationId,
        ),
        (
            "signed prekey signature of 63 bytes",
            Box::new(|| {
                enlist_child(|e| {
                    let i = sub(e, "signed-prekey");
                    let spk = &mut nodes(e)[i];
                    let j = sub(spk, "signature");
                    nodes(spk)[j].content = interop_stanza::Content::Bytes(vec![0; 63]);
                })
            }),
            InvalidSignedPrekey,
        ),
        (
            "signed prekey id above 24 bits",
            Box::new(|| {
                enlist_child(|e| {
                    let i = sub(e, "signed-prekey");
                    nodes(e)[i].set_attr("id", "16777216");
                })
            }),
            InvalidSignedPrekey,
        ),
        (
            "kyber prekey missing",
            Box::new(|| {
                enlist_child(|e| {
                    nodes(e).retain(|c| c.tag != "kyber-prekey");
                })
            }),
            InvalidKyberPrekey,
        ),
        (
            "kyber prekey of an EC key",
            Box::new(|| {
                enlist_child(|e| {
                    let i = sub(e, "kyber-prekey");
                    let k = &mut nodes(e)[i];
                    let j = sub(k, "public");
                    let mut ec = vec![5];
                    ec.extend([0; 32]);
                    nodes(k)[j].content = interop_stanza::Content::Bytes(ec);
                })
            }),
            InvalidKyberPrekey,
        ),
        (
            "repeated prekey id",
            Box::new(|| {
                enlist_child(|e| {
                    let i = sub(e, "prekeys");
                    let list = nodes(&mut nodes(e)[i]);
                    let dup = list[0].clone();
                    list.push(dup);
                })
            }),
            InvalidPrekeys,
        ),
        (
            "201 prekeys",
            Box::new(|| {
                enlist_child(|e| {
                    let i = sub(e, "prekeys");
                    let list = nodes(&mut nodes(e)[i]);
                    let mut pk = vec![5];
                    pk.extend([0; 32]);
                    *list = (0..201)
                        .map(|id| {
                            Node::new("key").with_attr("id", id.to_string()).with_bytes(pk.clone())
                        })
                        .collect();
                })
            }),
            InvalidPrekeys,
        ),
        (
            "consent missing",
            Box::new(|| enlist_child(|e| nodes(e).retain(|c| c.tag != "consent"))),
            ConsentRequired,
        ),
        (
            "consent version with a space",
            Box::new(|| {
                enlist_child(|e| {
                    let i = sub(e, "consent");
                    nodes(e)[i].set_attr("version", "v 1");
                })
            }),
            ConsentRequired,
        ),
        (
            "read receipts 'yes'",
            Box::new(|| {
                enlist_child(|e| {
                    let i = sub(e, "consent");
                    nodes(e)[i].set_attr("read-receipts", "yes");
                })
            }),
            BadRequest,
        ),
        (
            "push token missing",
            Box::new(|| enlist_child(|e| nodes(e).retain(|c| c.tag != "push-token"))),
            InvalidPushToken,
        ),
        (
            "push token too long",
            Box::new(|| {
                enlist_child(|e| {
                    let i = sub(e, "push-token");
                    nodes(e)[i].content =
                        interop_stanza::Content::Bytes(vec![1; MAX_PUSH_TOKEN + 1]);
                })
            }),
            InvalidPushToken,
        ),
        (
            "confirm code of 5 digits",
            Box::new(|| {
                Request::Confirm { identifier: "bob".into(), code: "12345".into(), keys: bundle() }
                    .to_node("q")
            }),
            InvalidCode,
        ),
        (
            "register an empty identifier",
            Box::new(|| Request::Register { identifier: String::new() }.to_node("q")),
            InvalidIdentifier,
        ),
        (
            "interop flag 'true'",
            Box::new(|| {
                let mut n = Request::InteropOptIn { enabled: true }.to_node("q");
                nodes(&mut n)[0].set_attr("enabled", "true");
                n
            }),
            BadRequest,
        ),
    ];
    for (name, make, want) in cases {
        let node = make();
        match Request::from_node(&node) {
            Err(Error::BadRequest(code)) => assert_eq!(code, want, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn error_responses_keep_the_request_id() {
    let mut bad = enlist().to_node("req-7");
    nodes(&mut bad).clear();
    let Err(Error::BadRequest(code)) = Request::from_node(&bad) else { panic!("must fail") };
    let id = iq_id(&bad).expect("id survives");
    let answer = Response::Error(code).to_node(id);
    assert_eq!(answer.attr("type"), Some("error"));
    assert_eq!(
        Response::from_node(&answer).expect("parses"),
        ("req-7".to_owned(), Response::Error(ErrorCode::BadRequest))
    );
}

#[test]
fn error_codes_have_stable_distinct_wire_strings() {
    let all = [
        ("bad-request", ErrorCode::BadRequest),
        ("unsupported-version", ErrorCode::UnsupportedVersion),
        ("not-authorized", ErrorCode::NotAuthorized),
        ("consent-required", ErrorCode::ConsentRequired),
        ("invalid-identity-key", ErrorCode::InvalidIdentityKey),
        ("invalid-registration-id", ErrorCode::InvalidRegistrationId),
        ("invalid-signed-prekey", ErrorCode::InvalidSignedPrekey),
        ("invalid-kyber-prekey", ErrorCode::InvalidKyberPrekey),
        ("invalid-prekeys", ErrorCode::InvalidPrekeys),
        ("invalid-push-token", ErrorCode::InvalidPushToken),
        ("not-enlisted", ErrorCode::NotEnlisted),
        ("device-limit", ErrorCode::DeviceLimit),
        ("provider-disabled", ErrorCode::ProviderDisabled),
        ("invalid-identifier", ErrorCode::InvalidIdentifier),
        ("invalid-code", ErrorCode::InvalidCode),
        ("code-expired", ErrorCode::CodeExpired),
        ("rate-limited", ErrorCode::RateLimited),
        ("internal-error", ErrorCode::InternalError),
    ];
    for (wire, code) in all {
        assert_eq!(code.as_str(), wire);
        assert_eq!(ErrorCode::from_wire(wire), Some(code));
    }
    assert_eq!(ErrorCode::from_wire("Bad-Request"), None);
}

#[test]
fn debug_does_not_leak_key_material_or_tokens() {
    let r = enlist();
    let dbg = format!("{r:?}");
    assert!(!dbg.contains("opaque") && !dbg.contains("5, 1, 1"), "{dbg}");
    assert!(!format!("{:?}", bundle()).contains('['));
}

#[test]
fn verification_codes() {
    use interop_enlist::UnixTime;
    use rand::SeedableRng as _;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let t = UnixTime::from_secs(1000);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let c = PendingCode::generate(&mut rng, t);
        assert_eq!(c.code().len(), 6);
        assert!(c.code().bytes().all(|b| b.is_ascii_digit()));
        assert!(!format!("{c:?}").contains(c.code()));
        seen.insert(c.code().to_owned());
    }
    assert!(seen.len() > 190, "codes repeat too often");

    let mut c = PendingCode::generate(&mut rng, t);
    let good = c.code().to_owned();
    assert_eq!(c.expires_in(t), 600);
    assert_eq!(c.check("000000x", t), Err(ErrorCode::InvalidCode));
    assert_eq!(c.check(&good, t), Ok(()));
    assert_eq!(c.check(&good, t), Err(ErrorCode::CodeExpired), "a code is good once");

    let mut c = PendingCode::generate(&mut rng, t);
    let good = c.code().to_owned();
    let wrong = if good == "123456" { "654321" } else { "123456" };
    for _ in 0..PendingCode::MAX_ATTEMPTS - 1 {
        assert_eq!(c.check(wrong, t), Err(ErrorCode::InvalidCode));
    }
    assert_eq!(c.check(wrong, t), Err(ErrorCode::CodeExpired));
    assert_eq!(c.check(&good, t), Err(ErrorCode::CodeExpired), "out of attempts");

    let mut c = PendingCode::generate(&mut rng, t);
    let good = c.code().to_owned();
    assert_eq!(
        c.check(&good, t + std::time::Duration::from_secs(600)),
        Err(ErrorCode::CodeExpired)
    );
}

#[test]
fn only_enlist_status_and_opt_out_before_enlistment() {
    assert!(enlist().allowed_before_enlistment());
    assert!(Request::Status.allowed_before_enlistment());
    assert!(Request::OptOut.allowed_before_enlistment());
    assert!(!Request::InteropOptIn { enabled: true }.allowed_before_enlistment());
    assert!(!Request::Register { identifier: "bob".into() }.allowed_before_enlistment());
}

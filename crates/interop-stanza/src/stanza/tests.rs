use super::*;
use crate::xml;

fn node(text: &str) -> Node {
    xml::from_str(text).expect("valid XML")
}

#[test]
fn unknown_attributes_and_children_round_trip() {
    let cases = [
        r#"<message id="1" to="2001@s.interop" type="text" future="x"><enc v="2" type="msg" k="v">AQI=</enc><participants><to jid="a@s.interop" z="1"><enc v="3" type="pkmsg">AQ==</enc></to></participants><reaction emoji="+1"/></message>"#,
        r#"<receipt id="1" type="read" fresh="yes"><list><item id="2"/></list><extra/></receipt>"#,
        r#"<ack id="1" class="receipt" type="read" from="x@s.interop" unknown="1"/>"#,
        r#"<iq id="1" type="get" xmlns="encrypt" more="1"><count/><other a="b"/></iq>"#,
        r#"<iq id="1" type="set" xmlns="somethingnew"><thing><x/></thing></iq>"#,
        r#"<presence type="available" status="busy"><note>aGk=</note></presence>"#,
        r#"<chatstate from="x@s.interop" new="1"><paused/></chatstate>"#,
        r#"<notification id="1" type="encrypt" x="y"><count value="3"/></notification>"#,
        r#"<stream:error condition="conflict" host="b"><extra/></stream:error>"#,
        r#"<iq id="9" type="error" xmlns="devices"><error type="wait" condition="resource-constraint" text="slow" retry="5"/></iq>"#,
        r#"<unknown a="1"/>"#,
    ];
    for text in cases {
        let n = node(text);
        let typed = Stanza::from_node(n.clone()).expect(text);
        assert_eq!(typed.into_node(), n, "{text}");
    }
}

#[test]
fn parse_errors_name_what_is_wrong() {
    let cases: &[(&str, Error)] = &[
        (r#"<message type="text"/>"#, Error::MissingAttribute("id")),
        (r#"<message id="1" type="sms"/>"#, Error::InvalidAttribute("type")),
        (r#"<message id="1" type="text" t="01"/>"#, Error::InvalidAttribute("t")),
        (
            r#"<message id="1" type="text"><enc v="2" type="msg"/></message>"#,
            Error::MissingChild("enc ciphertext"),
        ),
        (
            r#"<message id="1" type="text"><enc v="2" type="rsa">AA==</enc></message>"#,
            Error::InvalidAttribute("type"),
        ),
        (r#"<receipt id="1" type="delivery"/>"#, Error::InvalidAttribute("type")),
        (r#"<ack id="1" class="presence"/>"#, Error::InvalidAttribute("class")),
        (r#"<iq id="1" type="put"/>"#, Error::InvalidAttribute("type")),
        (r#"<iq id="1" type="error"/>"#, Error::MissingChild("error")),
        (
            r#"<iq id="1" type="error"><error type="cancel" condition="oops"/></iq>"#,
            Error::InvalidAttribute("condition"),
        ),
        (
            r#"<iq id="1" type="result" xmlns="encrypt"><count value="-1"/></iq>"#,
            Error::InvalidAttribute("value"),
        ),
        (
            r#"<iq id="1" type="set" xmlns="encrypt"><identity>AA==</identity></iq>"#,
            Error::MissingChild("registration"),
        ),
        (r#"<chatstate><composing/><paused/></chatstate>"#, Error::MissingChild("chatstate state")),
        (r#"<stream:error condition="bad-request"/>"#, Error::InvalidAttribute("condition")),
    ];
    for (text, err) in cases {
        assert_eq!(Stanza::from_node(node(text)).err().as_ref(), Some(err), "{text}");
    }
    assert_eq!(
        Message::from_node(Node::new("ack")).err(),
        Some(Error::UnexpectedTag { expected: "message" })
    );
}

#[test]
fn iq_answers_echo_the_request() {
    let mut req = Iq::new("42", IqType::Get, Some("encrypt"), IqPayload::PrekeyCountRequest);
    req.from = Some("2001:3@s.interop".into());
    let ok = req.result(IqPayload::PrekeyCount(5));
    assert_eq!(
        (ok.id.as_str(), ok.kind, ok.xmlns.as_deref()),
        ("42", IqType::Result, Some("encrypt"))
    );
    assert_eq!(ok.to.as_deref(), Some("2001:3@s.interop"));
    let err = req.error(StanzaError::new(ErrorType::Cancel, Condition::FeatureNotImplemented));
    assert_eq!(err.kind, IqType::Error);
    assert_eq!(Iq::from_node(err.clone().into_node()), Ok(err));
}

#[test]
fn receipts_list_every_id() {
    let r = Receipt::new("a", ReceiptType::Read).with_ids(["b", "c"]);
    assert_eq!(r.ids().collect::<Vec<_>>(), ["a", "b", "c"]);
}

#[test]
fn every_condition_name_is_in_the_dictionary() {
    let d = crate::dict::Dictionary::current();
    for c in Condition::ALL {
        assert!(d.token(c.as_str()).is_some(), "{c}");
        assert_eq!(Condition::parse(c.as_str()), Some(*c));
    }
    for c in StreamCondition::ALL {
        assert!(d.token(c.as_str()).is_some(), "{c}");
        assert_eq!(StreamCondition::parse(c.as_str()), Some(*c));
    }
}

#[test]
fn debug_never_shows_identifiers_keys_or_tokens() {
    let info = MediaUploadInfo {
        auth: "SECRET-TOKEN".into(),
        ttl: 300,
        hosts: vec![MediaHost { hostname: "media.example".into() }],
    };
    let iq =
        Iq::new("id-77", IqType::Result, Some("media"), IqPayload::MediaUploadInfo(info.clone()));
    let msg = Message::new("cafe01", MessageType::Text)
        .to("alice.7:1@s.interop")
        .with_enc(Enc::new(EncType::Msg, b"ciphertext".to_vec()));
    let lookup = Iq::new(
        "1",
        IqType::Get,
        Some("contacts"),
        IqPayload::ContactLookup(vec!["+15550100".into()]),
    );
    for s in [
        format!("{info:?}"),
        format!("{iq:?}"),
        format!("{msg:?}"),
        format!("{:?}", lookup.payload),
        format!("{lookup:?}"),
    ] {
        for secret in ["SECRET-TOKEN", "id-77", "cafe01", "alice", "ciphertext", "+15550100"] {
            assert!(!s.contains(secret), "{s}");
        }
    }
}

mod props {
    use proptest::prelude::*;

    use super::*;
    use crate::binary;
    use crate::testutil::arb_value;

    fn extra_attrs(known: &'static [&'static str]) -> impl Strategy<Value = Vec<(String, String)>> {
        proptest::collection::vec(("x[a-z]{0,6}", arb_value()), 0..3).prop_map(move |v| {
            let mut seen = std::collections::HashSet::new();
            v.into_iter()
                .filter(|(k, _)| !known.contains(&k.as_str()) && seen.insert(k.clone()))
                .collect()
        })
    }

    fn enc() -> impl Strategy<Value = Enc> {
        (
            any::<u32>(),
            proptest::sample::select(EncType::ALL.to_vec()),
            proptest::option::of("[a-z]{1,8}"),
            proptest::collection::vec(any::<u8>(), 0..64),
            extra_attrs(&["v", "type", "mediatype"]),
        )
            .prop_map(|(version, kind, media_type, ciphertext, extra_attrs)| Enc {
                version,
                kind,
                media_type,
                ciphertext,
                extra_attrs,
            })
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            arb_value(),
            proptest::option::of(arb_value()),
            proptest::option::of(arb_value()),
            proptest::sample::select(MessageType::ALL.to_vec()),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec(enc(), 0..3),
            proptest::collection::vec((arb_value(), proptest::collection::vec(enc(), 0..2)), 0..3),
            extra_attrs(&["id", "to", "from", "type", "t"]),
            proptest::collection::vec("x[a-z]{0,6}".prop_map(Node::new), 0..2),
        )
            .prop_map(
                |(id, to, from, kind, timestamp, encs, parts, extra_attrs, extra_children)| {
                    Message {
                        id,
                        to,
                        from,
                        kind,
                        timestamp,
                        encs,
                        participants: parts
                            .into_iter()
                            .map(|(jid, encs)| Participant { jid, encs, extra_attrs: Vec::new() })
                            .collect(),
                        extra_attrs,
                        extra_children,
                    }
                },
            )
    }

    fn receipt() -> impl Strategy<Value = Receipt> {
        (
            arb_value(),
            proptest::option::of(arb_value()),
            proptest::sample::select(ReceiptType::ALL.to_vec()),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec(arb_value(), 0..4),
            proptest::option::of(any::<u32>()),
            extra_attrs(&["id", "to", "from", "type", "t"]),
        )
            .prop_map(|(id, to, kind, timestamp, more_ids, retry_count, extra_attrs)| {
                Receipt {
                    id,
                    to,
                    from: None,
                    kind,
                    timestamp,
                    more_ids,
                    retry_count,
                    extra_attrs,
                    extra_children: Vec::new(),
                }
            })
    }

    proptest! {
        #[test]
        fn messages_round_trip_through_the_wire(m in message()) {
            let wire = binary::encode(&m.clone().into_node())?;
            prop_assert_eq!(Message::from_node(binary::decode(&wire)?)?, m);
        }

        #[test]
        fn receipts_round_trip_through_the_wire(r in receipt()) {
            let wire = binary::encode(&r.clone().into_node())?;
            prop_assert_eq!(Receipt::from_node(binary::decode(&wire)?)?, r);
        }
    }
}

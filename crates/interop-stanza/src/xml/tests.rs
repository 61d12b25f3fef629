use proptest::prelude::*;

use super::*;
use crate::binary;
use crate::testutil::arb_xml_node;

proptest! {
    #[test]
    fn round_trip(node in arb_xml_node()) {
        let text = to_string(&node)?;
        prop_assert_eq!(from_str(&text)?, node.clone());
        prop_assert_eq!(from_str(&to_string_pretty(&node)?)?, node);
    }

    #[test]
    fn xml_to_binary_to_xml_is_the_identity(node in arb_xml_node()) {
        let text = to_string(&node)?;
        let wire = binary::encode(&from_str(&text)?)?;
        prop_assert_eq!(to_string(&binary::decode(&wire)?)?, text);
    }

    #[test]
    fn garbage_never_panics(text in "[<>/=\"a-c &;#!?\\[\\]-]{0,80}") {
        let _ = from_str(&text);
    }
}

#[test]
fn known_form() {
    let n = Node::new("message")
        .with_attr("id", "1")
        .with_attr("note", "a<b & \"c\"\n\td")
        .with_children(vec![
            Node::new("enc").with_bytes(b"hi!".to_vec()),
            Node::new("empty"),
            Node::new("nothing").with_bytes(vec![]),
        ]);
    let compact = r#"<message id="1" note="a&lt;b &amp; &quot;c&quot;&#10;&#9;d"><enc>aGkh</enc><empty/><nothing></nothing></message>"#;
    assert_eq!(to_string(&n).as_deref(), Ok(compact));
    let pretty = "<message id=\"1\" note=\"a&lt;b &amp; &quot;c&quot;&#10;&#9;d\">\n  <enc>aGkh</enc>\n  <empty/>\n  <nothing></nothing>\n</message>";
    assert_eq!(to_string_pretty(&n).as_deref(), Ok(pretty));
    assert_eq!(from_str(compact), Ok(n.clone()));
    assert_eq!(from_str(pretty), Ok(n));
}

#[test]
fn reader_accepts_declaration_comments_cdata_and_wrapped_base64() {
    let text = "<?xml version=\"1.0\"?>\n<!-- c --><a x='&#x41;&apos;'><b>aGk\n  h</b><c><![CDATA[aGkh]]></c></a>\n";
    let n = from_str(text).expect("valid");
    assert_eq!(n.attr("x"), Some("A'"));
    assert_eq!(n.children()[0].bytes(), Some(&b"hi!"[..]));
    assert_eq!(n.children()[1].bytes(), Some(&b"hi!"[..]));
}

#[test]
fn hostile_inputs_each_have_their_own_error() {
    let billion_laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<lolz>&lol3;</lolz>"#;
    assert_eq!(from_str(billion_laughs), Err(Error::EntityDeclarationForbidden));
    let external = r#"<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><x>&xxe;</x>"#;
    assert_eq!(from_str(external), Err(Error::EntityDeclarationForbidden));
    assert_eq!(
        from_str(r#"<!DOCTYPE x SYSTEM "http://example.invalid/x.dtd"><x/>"#),
        Err(Error::DtdForbidden)
    );
    assert_eq!(from_str("<x>&xxe;</x>"), Err(Error::UnknownEntity));
    assert_eq!(from_str("<x a='&xxe;'/>"), Err(Error::UnknownEntity));
    assert_eq!(from_str("<x><?php evil()?></x>"), Err(Error::ProcessingInstructionForbidden));
    assert_eq!(from_str("<x>not base64!</x>"), Err(Error::InvalidBase64));
    assert_eq!(
        from_str("<x>aGkh<y/></x>"),
        Err(Error::InvalidXml { reason: "text mixed with elements" })
    );
    assert_eq!(
        from_str("<x/><y/>"),
        Err(Error::InvalidXml { reason: "content after the root element" })
    );
    assert_eq!(from_str("<x a='1' a='2'/>"), Err(Error::DuplicateAttribute));
    assert_eq!(from_str("<x><y></x>"), Err(Error::InvalidXml { reason: "ill-formed document" }));
    assert_eq!(from_str("<x><y>"), Err(Error::Truncated));
    assert_eq!(from_str(""), Err(Error::Truncated));
    assert_eq!(from_bytes(b"<x a='\xff'/>"), Err(Error::InvalidUtf8));
    assert_eq!(
        from_str("<x a='\u{1}'/>"),
        Err(Error::InvalidXml { reason: "character not allowed in XML" })
    );
}

#[test]
fn million_levels_of_nesting_are_a_depth_error() {
    let levels = 1_000_000;
    let mut text = String::with_capacity(levels * 7);
    for _ in 0..levels {
        text.push_str("<a>");
    }
    for _ in 0..levels {
        text.push_str("</a>");
    }
    let limits = Limits { max_size: 8 << 20, ..Limits::DEFAULT };
    assert_eq!(from_str_with(&text, &limits), Err(Error::TooDeep { max: 64 }));
    assert_eq!(from_str(&text), Err(Error::LimitExceeded { limit: "stanza size", max: 1 << 20 }));
}

#[test]
fn limits_on_attributes_and_nodes() {
    let mut text = String::from("<x");
    for i in 0..65 {
        text.push_str(&format!(" a{i}='1'"));
    }
    text.push_str("/>");
    assert_eq!(from_str(&text), Err(Error::LimitExceeded { limit: "attribute count", max: 64 }));
    let text = format!("<x>{}</x>", "<y/>".repeat(100));
    let limits = Limits { max_nodes: 100, ..Limits::DEFAULT };
    assert_eq!(
        from_str_with(&text, &limits),
        Err(Error::LimitExceeded { limit: "node count", max: 100 })
    );
}

#[test]
fn writer_refuses_what_xml_cannot_carry() {
    assert_eq!(to_string(&Node::new("1x")), Err(Error::NotXmlRepresentable("not an XML name")));
    assert_eq!(
        to_string(&Node::new("x").with_attr("a b", "")),
        Err(Error::NotXmlRepresentable("not an XML name"))
    );
    assert_eq!(
        to_string(&Node::new("x").with_attr("a", "\u{0}")),
        Err(Error::NotXmlRepresentable("a character XML 1.0 cannot carry"))
    );
    // An empty child list has no XML form of its own.
    assert_eq!(to_string(&Node::new("x").with_children(vec![])).as_deref(), Ok("<x/>"));
}

//! Shared proptest strategies.

use proptest::prelude::*;

use crate::dict::Dictionary;
use crate::{Content, Node};

/// Strings that exercise every string form of the binary codec; all XML-representable.
pub(crate) fn arb_value() -> impl Strategy<Value = String> {
    let d = Dictionary::current();
    let tokens: Vec<String> =
        d.page0().iter().skip(1).chain(d.page1()).map(|s| (*s).to_owned()).collect();
    prop_oneof![
        proptest::sample::select(tokens),
        "[0-9.-]{1,20}",
        "[0-9a-f]{1,40}",
        "[a-z0-9]{1,8}(\\.(0|[1-9][0-9]{0,3}))?(:(0|[1-9][0-9]?))?@(s\\.interop|g\\.interop|example\\.org)",
        "[ -~]{0,12}",
        "[\\t\\n\\r -~\u{a0}-\u{d7ff}\u{e000}-\u{fffd}\u{10000}-\u{10ffff}]{0,12}",
    ]
}

/// XML names (the subset the XML codec writes).
pub(crate) fn arb_name() -> impl Strategy<Value = String> {
    let d = Dictionary::current();
    let tokens: Vec<String> = d
        .page0()
        .iter()
        .skip(1)
        .chain(d.page1())
        .filter(|s| s.as_bytes()[0].is_ascii_alphabetic())
        .map(|s| (*s).to_owned())
        .collect();
    prop_oneof![proptest::sample::select(tokens), "[a-zA-Z_][a-zA-Z0-9_.:-]{0,10}"]
}

fn attrs() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((arb_name(), arb_value()), 0..5).prop_map(|mut v| {
        let mut seen = std::collections::HashSet::new();
        v.retain(|(k, _)| seen.insert(k.clone()));
        v
    })
}

/// Nodes the XML form represents exactly (no empty child lists).
pub(crate) fn arb_xml_node() -> impl Strategy<Value = Node> {
    let leaf = (
        arb_name(),
        attrs(),
        prop_oneof![
            Just(Content::Empty),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Content::Bytes),
        ],
    )
        .prop_map(|(tag, attrs, content)| Node { tag, attrs, content });
    leaf.prop_recursive(5, 48, 5, |inner| {
        (arb_name(), attrs(), proptest::collection::vec(inner, 1..5))
            .prop_map(|(tag, attrs, c)| Node { tag, attrs, content: Content::Nodes(c) })
    })
}

/// Any node, including empty child lists and strings XML cannot carry.
pub(crate) fn arb_node() -> impl Strategy<Value = Node> {
    let any_string =
        prop_oneof![arb_value(), any::<String>().prop_map(|s| s.chars().take(12).collect())];
    let leaf = (
        any_string.clone(),
        proptest::collection::vec((any_string.clone(), any_string.clone()), 0..4),
        prop_oneof![
            Just(Content::Empty),
            Just(Content::Nodes(Vec::new())),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Content::Bytes),
        ],
    )
        .prop_map(|(tag, attrs, content)| {
            let mut n = Node { tag, attrs: Vec::new(), content };
            for (k, v) in attrs {
                if n.attr(&k).is_none() {
                    n.attrs.push((k, v));
                }
            }
            n
        });
    leaf.prop_recursive(5, 64, 20, move |inner| {
        (any_string.clone(), proptest::collection::vec(inner, 0..20)).prop_map(|(tag, c)| Node {
            tag,
            attrs: Vec::new(),
            content: Content::Nodes(c),
        })
    })
}

//! Untrusted tokens never panic, and any change to a signed token is refused.

mod common;

use common::*;
use interop_enlist::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,300}") {
        let _ = UnverifiedToken::parse(&s);
    }

    #[test]
    fn arbitrary_dotted_base64_never_panics(parts in prop::collection::vec("[A-Za-z0-9_=+/-]{0,80}", 0..5)) {
        let t = parts.join(".");
        if let Ok(p) = UnverifiedToken::parse(&t) {
            let _ = p.issuer_hint();
        }
    }

    #[test]
    fn every_mutation_of_a_valid_token_is_refused(
        edits in prop::collection::vec((any::<prop::sample::Index>(), "[A-Za-z0-9_.=-]"), 1..4)
    ) {
        let mut w = World::ed25519();
        let token = w.token();
        let mut bytes = token.clone().into_bytes();
        for (at, ch) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = ch.as_bytes()[0];
        }
        let mutated = String::from_utf8(bytes).expect("ASCII");
        prop_assume!(mutated != token);
        prop_assert!(w.refusal(&mutated, &device()).is_some());
    }
}

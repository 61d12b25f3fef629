//! Untrusted input never panics: arbitrary headers, paths, addresses, URLs and downloads.

use interop_media::{
    ContentAddress, Decryptor, Error, FileDigests, MediaBaseUrl, MediaKey, MediaPath, MediaType,
    ProviderId, RangeRequest, SchemePolicy, check_redirect, parse_range, proxy_url,
};
use proptest::prelude::*;

proptest! {
    #[test]
    fn range_parsing_is_total_and_in_bounds(header in ".{0,40}", total in any::<u64>()) {
        if let RangeRequest::Partial(r) = parse_range(Some(&header), total) {
            prop_assert!(r.start <= r.end && r.end < total);
        }
    }

    #[test]
    fn range_parsing_of_digit_forms(a in any::<u64>(), b in any::<u64>(), total in 0u64..1000) {
        for h in [format!("bytes={a}-{b}"), format!("bytes={a}-"), format!("bytes=-{b}")] {
            if let RangeRequest::Partial(r) = parse_range(Some(&h), total) {
                prop_assert!(r.start <= r.end && r.end < total, "{h}");
            }
        }
    }

    #[test]
    fn accepted_paths_never_leave_the_base(path in "[a-zA-Z0-9._~%/:@?#\\\\-]{1,40}") {
        let base = MediaBaseUrl::parse("https://media.example/v1/", SchemePolicy::HttpsOnly).unwrap();
        if let Ok(p) = MediaPath::parse(&path) {
            let url = proxy_url(&base, &p).unwrap();
            prop_assert_eq!(url.host_str(), Some("media.example"));
            prop_assert!(url.path().starts_with("/v1/"));
            prop_assert_eq!(&url.path()[4..], p.as_str());
        }
    }

    #[test]
    fn redirects_are_total(location in ".{0,60}") {
        let base = MediaBaseUrl::parse("https://media.example/v1/", SchemePolicy::HttpsOnly).unwrap();
        let current = proxy_url(&base, &MediaPath::parse("abc").unwrap()).unwrap();
        if let Ok(url) = check_redirect(&base, &current, &location, 0, &Default::default()) {
            prop_assert!(base.contains(&url));
            prop_assert_eq!(url.host_str(), Some("media.example"));
        }
    }

    #[test]
    fn identifiers_parse_totally(s in ".{0,80}") {
        let _ = ProviderId::parse(&s);
        let _ = ContentAddress::parse(&s);
        let _ = MediaBaseUrl::parse(&s, SchemePolicy::HttpsOnly);
    }

    #[test]
    fn random_downloads_fail_cleanly(
        file in proptest::collection::vec(any::<u8>(), 0..200),
        plaintext_len in 0u64..200,
    ) {
        let digests = FileDigests { plaintext_len, plaintext_sha256: [0; 32], encrypted_sha256: [0; 32] };
        let mut dec = Decryptor::new(&MediaKey::from_bytes([1; 32]), MediaType::Image, digests, Vec::new()).unwrap();
        let r = dec.update(&file).and_then(|()| dec.finish().map(drop));
        prop_assert!(matches!(r, Err(Error::Integrity | Error::Truncated | Error::TooLong)), "{r:?}");
    }
}

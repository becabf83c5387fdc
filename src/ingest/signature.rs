//! `[auth.signature]`: the signature a sender computes over a message (named parameters, the
//! raw body, a secret), checked in constant time. Only maintained crates do the hashing.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::rules::{SigAlgorithm, SigEncoding, SigPart, Signature};

/// The message the sender signed: parameters by their decoded value (first occurrence, names
/// per `ignore_case`; an absent one is empty), `{@body}` the raw body byte for byte.
pub fn message(
    sig: &Signature,
    params: &[(String, String)],
    body: &[u8],
    ignore_case: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    for part in &sig.message {
        match part {
            SigPart::Lit(l) | SigPart::Secret(l) => out.extend_from_slice(l.as_bytes()),
            SigPart::Body => out.extend_from_slice(body),
            SigPart::Param(name) => {
                let value = params.iter().find(|(n, _)| {
                    if ignore_case {
                        n.eq_ignore_ascii_case(name)
                    } else {
                        n == name
                    }
                });
                if let Some((_, v)) = value {
                    out.extend_from_slice(v.as_bytes());
                }
            }
        }
    }
    out
}

/// The digest of `message` per the algorithm (keyed with the secret for `hmac-*`).
pub fn digest(sig: &Signature, message: &[u8]) -> Vec<u8> {
    let key = sig.secret.as_deref().unwrap_or("").as_bytes();
    match sig.algorithm {
        SigAlgorithm::Md5 => Md5::digest(message).to_vec(),
        SigAlgorithm::Sha1 => Sha1::digest(message).to_vec(),
        SigAlgorithm::Sha256 => Sha256::digest(message).to_vec(),
        SigAlgorithm::HmacSha1 => {
            let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key)
                .expect("HMAC accepts keys of any length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        SigAlgorithm::HmacSha256 => {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
                .expect("HMAC accepts keys of any length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

/// The bytes of a signature as sent: hex in either case, or base64 (standard or URL-safe,
/// padded or not). `None` when it is not in that encoding.
fn decode(encoding: SigEncoding, given: &str) -> Option<Vec<u8>> {
    let given = given.trim();
    match encoding {
        SigEncoding::Hex => hex::decode(given).ok(),
        SigEncoding::Base64 => {
            use base64::engine::general_purpose::{
                STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
            };
            [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|e| e.decode(given).ok())
        }
    }
}

/// Whether `given` is the signature of this postback; the comparison is constant-time (only
/// the length of what was sent can show).
pub fn verify(
    sig: &Signature,
    params: &[(String, String)],
    body: &[u8],
    given: &str,
    ignore_case: bool,
) -> bool {
    let Some(given) = decode(sig.encoding, given) else {
        return false;
    };
    let expected = digest(sig, &message(sig, params, body, ignore_case));
    expected.ct_eq(&given).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::SigLocation;

    fn sig(algorithm: SigAlgorithm, encoding: SigEncoding, secret: Option<&str>) -> Signature {
        Signature {
            algorithm,
            message: vec![
                SigPart::Param("a".into()),
                SigPart::Lit(":".into()),
                SigPart::Body,
                SigPart::Secret("k".into()),
            ],
            location: SigLocation::Param("sig".into()),
            encoding,
            secret: secret.map(str::to_string),
        }
    }

    #[test]
    fn known_digests_of_each_algorithm() {
        let params = vec![("a".to_string(), "1".to_string())];
        // message "1:bodyk"
        let hex_of = |s: &Signature| hex::encode(digest(s, &message(s, &params, b"body", false)));
        assert_eq!(
            hex_of(&sig(SigAlgorithm::Md5, SigEncoding::Hex, None)),
            hex::encode(Md5::digest(b"1:bodyk"))
        );
        assert_eq!(
            hex::encode(digest(
                &sig(SigAlgorithm::Md5, SigEncoding::Hex, None),
                b"abc"
            )),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            hex::encode(digest(
                &sig(SigAlgorithm::Sha1, SigEncoding::Hex, None),
                b"abc"
            )),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex::encode(digest(
                &sig(SigAlgorithm::Sha256, SigEncoding::Hex, None),
                b"abc"
            )),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // RFC 4231 test case 2.
        assert_eq!(
            hex::encode(digest(
                &sig(SigAlgorithm::HmacSha256, SigEncoding::Hex, Some("Jefe")),
                b"what do ya want for nothing?"
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // RFC 2202 test case 2.
        assert_eq!(
            hex::encode(digest(
                &sig(SigAlgorithm::HmacSha1, SigEncoding::Hex, Some("Jefe")),
                b"what do ya want for nothing?"
            )),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    #[test]
    fn hex_in_either_case_and_base64_in_any_alphabet_verify() {
        let params = vec![("a".to_string(), "1".to_string())];
        let s = sig(SigAlgorithm::Md5, SigEncoding::Hex, None);
        let d = digest(&s, &message(&s, &params, b"body", false));
        assert!(verify(&s, &params, b"body", &hex::encode(&d), false));
        assert!(verify(&s, &params, b"body", &hex::encode_upper(&d), false));
        assert!(!verify(&s, &params, b"other", &hex::encode(&d), false));
        assert!(!verify(&s, &params, b"body", "not hex", false));
        let s = sig(SigAlgorithm::HmacSha256, SigEncoding::Base64, Some("key"));
        let d = digest(&s, &message(&s, &params, b"body", false));
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        assert!(verify(&s, &params, b"body", &STANDARD.encode(&d), false));
        assert!(verify(
            &s,
            &params,
            b"body",
            &URL_SAFE_NO_PAD.encode(&d),
            false
        ));
        assert!(!verify(&s, &params, b"body", &hex::encode(&d), false));
    }
}

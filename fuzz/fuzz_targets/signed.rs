//! Signature checking: arbitrary signature frames never verify or panic, a
//! genuine signature verifies exactly once, one signed for a recipient
//! verifies only there, and any change to a signed message is refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zcluster::auth::{Channel, Key, Signer, Verifier, SIGNATURE_BYTES};
use zcluster::message::PROTOCOL;

fuzz_target!(|data: &[u8]| {
    let key = Key::from_bytes(b"a fuzzing key of enough length");
    let mut verifier = Verifier::new(key.clone(), Channel::ClientToHub);
    // Arbitrary frames: the first bytes as a signature, the rest split.
    let cut = data.len().min(SIGNATURE_BYTES);
    let (signature, rest) = data.split_at(cut);
    let (header, body) = rest.split_at(rest.len() / 2);
    assert!(verifier.verify(signature, PROTOCOL, header, body).is_err());

    let signer = Signer::new(key.clone(), Channel::ClientToHub);
    let genuine = signer.sign(PROTOCOL, header, body);
    assert!(verifier.verify(&genuine, PROTOCOL, header, body).is_ok());
    assert!(verifier.verify(&genuine, PROTOCOL, header, body).is_err());
    // Signed for one recipient: refused by any other, taken by it once.
    let (recipient, _) = data.split_at(data.len().min(16));
    let addressed = signer.sign_to(recipient, PROTOCOL, header, body);
    let mut other = Verifier::for_recipient(key.clone(), Channel::ClientToHub, b"other!".to_vec());
    let mut it = Verifier::for_recipient(key.clone(), Channel::ClientToHub, recipient.to_vec());
    if recipient != b"other!" {
        assert!(other.verify(&addressed, PROTOCOL, header, body).is_err());
    }
    assert!(it.verify(&addressed, PROTOCOL, header, body).is_ok());
    if let Some((&first, tail)) = data.split_first() {
        let mut altered = vec![first ^ 0x01];
        altered.extend_from_slice(tail);
        let signature = signer.sign(PROTOCOL, data, b"");
        assert!(verifier
            .verify(&signature, PROTOCOL, &altered, b"")
            .is_err());
    }
});

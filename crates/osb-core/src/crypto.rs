//! Encryption at rest for what the state store must keep secret (binding credentials).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};

const NONCE_LEN: usize = 24;

/// Seals and opens values with XChaCha20-Poly1305 (random 192-bit nonces, so no counter has to
/// be shared between replicas). Keys are 32 bytes, given base64-encoded in config. Sealing uses
/// the current key; opening also tries the previous ones, so keys can be rotated.
pub struct Sealer {
    current: XChaCha20Poly1305,
    previous: Vec<XChaCha20Poly1305>,
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("encryption keys must be 32 bytes, base64-encoded (e.g. `openssl rand -base64 32`)")]
    BadKey,
    #[error("a sealed value could not be opened: wrong encryption_key or corrupted data")]
    Open,
}

fn cipher(key: &SecretString) -> Result<XChaCha20Poly1305, CryptoError> {
    let bytes = STANDARD
        .decode(key.expose_secret().trim())
        .map_err(|_| CryptoError::BadKey)?;
    if bytes.len() != 32 {
        return Err(CryptoError::BadKey);
    }
    Ok(XChaCha20Poly1305::new(Key::from_slice(&bytes)))
}

impl Sealer {
    /// `current` seals; `previous` keys (older first or not: all are tried) only open.
    pub fn new(current: &SecretString, previous: &[SecretString]) -> Result<Self, CryptoError> {
        Ok(Self {
            current: cipher(current)?,
            previous: previous.iter().map(cipher).collect::<Result<_, _>>()?,
        })
    }

    /// `base64(nonce || ciphertext)`.
    pub fn seal(&self, plaintext: &[u8]) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .current
            .encrypt(&nonce, plaintext)
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory input");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        STANDARD.encode(out)
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, CryptoError> {
        let raw = STANDARD.decode(sealed).map_err(|_| CryptoError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|c| c.decrypt(XNonce::from_slice(nonce), body).ok())
            .ok_or(CryptoError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretString {
        SecretString::from(STANDARD.encode([byte; 32]))
    }

    #[test]
    fn sealed_value_round_trips_and_hides_plaintext() {
        let sealer = Sealer::new(&key(7), &[]).unwrap();
        let sealed = sealer.seal(b"{\"password\":\"hunter2\"}");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(sealer.open(&sealed).unwrap(), b"{\"password\":\"hunter2\"}");
    }

    #[test]
    fn wrong_key_cannot_open() {
        let sealed = Sealer::new(&key(1), &[]).unwrap().seal(b"secret");
        assert!(Sealer::new(&key(2), &[]).unwrap().open(&sealed).is_err());
    }

    #[test]
    fn rotated_key_still_opens_what_the_old_one_sealed() {
        let old = Sealer::new(&key(1), &[]).unwrap().seal(b"secret");
        let rotated = Sealer::new(&key(2), &[key(1)]).unwrap();
        assert_eq!(rotated.open(&old).unwrap(), b"secret");
        let new = rotated.seal(b"fresh");
        assert!(
            Sealer::new(&key(1), &[]).unwrap().open(&new).is_err(),
            "new values use the new key"
        );
    }

    #[test]
    fn short_key_is_refused() {
        let short = SecretString::from(STANDARD.encode([0u8; 16]));
        assert!(Sealer::new(&short, &[]).is_err());
        assert!(Sealer::new(&key(1), &[short]).is_err());
    }
}

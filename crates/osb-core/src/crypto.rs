//! Encryption at rest for what the state store must keep secret (binding credentials).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};

const NONCE_LEN: usize = 24;

/// Seals and opens values with XChaCha20-Poly1305 (random 192-bit nonces, so no counter has to
/// be shared between replicas). The key is 32 bytes, given base64-encoded in config.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("encryption_key must be 32 bytes, base64-encoded (e.g. `openssl rand -base64 32`)")]
    BadKey,
    #[error("a sealed value could not be opened: wrong encryption_key or corrupted data")]
    Open,
}

impl Sealer {
    pub fn from_base64(key: &SecretString) -> Result<Self, CryptoError> {
        let bytes = STANDARD
            .decode(key.expose_secret().trim())
            .map_err(|_| CryptoError::BadKey)?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        Ok(Self {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&bytes)),
        })
    }

    /// `base64(nonce || ciphertext)`.
    pub fn seal(&self, plaintext: &[u8]) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
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
        self.cipher
            .decrypt(XNonce::from_slice(nonce), body)
            .map_err(|_| CryptoError::Open)
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
        let sealer = Sealer::from_base64(&key(7)).unwrap();
        let sealed = sealer.seal(b"{\"password\":\"hunter2\"}");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(sealer.open(&sealed).unwrap(), b"{\"password\":\"hunter2\"}");
    }

    #[test]
    fn wrong_key_cannot_open() {
        let sealed = Sealer::from_base64(&key(1)).unwrap().seal(b"secret");
        assert!(Sealer::from_base64(&key(2)).unwrap().open(&sealed).is_err());
    }

    #[test]
    fn short_key_is_refused() {
        assert!(Sealer::from_base64(&SecretString::from(STANDARD.encode([0u8; 16]))).is_err());
    }
}

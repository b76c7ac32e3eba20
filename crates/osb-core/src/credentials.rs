//! Generated secrets and the credentials map a binding hands to an app.

use std::fmt;

use rand::seq::IndexedRandom;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Characters of generated passwords: RFC 3986 unreserved, so a password stands unescaped in
/// URIs, JDBC URLs and connection strings, and holds every class password policies ask for.
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const DIGITS: &[u8] = b"0123456789";
const SPECIAL: &[u8] = b"-._~";

/// How long generated passwords are; brokers take it from their config
/// (`password_length`, 16 to 128, default 40: about 250 bits of entropy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "usize")]
pub struct PasswordLength(usize);

impl PasswordLength {
    pub const MIN: usize = 16;
    pub const MAX: usize = 128;

    pub fn get(self) -> usize {
        self.0
    }
}

impl Default for PasswordLength {
    fn default() -> Self {
        Self(40)
    }
}

impl TryFrom<usize> for PasswordLength {
    type Error = String;

    fn try_from(len: usize) -> Result<Self, Self::Error> {
        if (Self::MIN..=Self::MAX).contains(&len) {
            Ok(Self(len))
        } else {
            Err(format!(
                "password_length must be {} to {}, not {len}",
                Self::MIN,
                Self::MAX
            ))
        }
    }
}

/// A password from the thread-local CSPRNG (ChaCha, seeded from the OS) with at least one
/// uppercase letter, lowercase letter, digit and one of `-._~`, as MySQL's `validate_password`,
/// MariaDB's `simple_password_check` and most policies require. Drawn uniformly from all such
/// passwords (draws that miss a class are thrown away).
pub fn generate_password(len: PasswordLength) -> SecretString {
    let alphabet: Vec<u8> = [UPPER, LOWER, DIGITS, SPECIAL].concat();
    let mut rng = rand::rng();
    loop {
        let candidate: String = (0..len.get())
            .map(|_| *alphabet.choose(&mut rng).expect("non-empty alphabet") as char)
            .collect();
        if [UPPER, LOWER, DIGITS, SPECIAL]
            .iter()
            .all(|class| candidate.bytes().any(|b| class.contains(&b)))
        {
            return SecretString::from(candidate);
        }
    }
}

/// The `credentials` object of a binding. Its `Debug` shows the keys only, so that logging a
/// value that holds credentials cannot leak them.
#[derive(Clone, Default, PartialEq)]
pub struct Credentials(Map<String, Value>);

impl Credentials {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    pub fn with_secret(self, key: &str, secret: &SecretString) -> Self {
        self.with(key, secret.expose_secret())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "***")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hold_every_class_and_are_uri_safe() {
        let len = PasswordLength::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let p = generate_password(len);
            let p = p.expose_secret();
            assert_eq!(p.len(), 40);
            for class in [UPPER, LOWER, DIGITS, SPECIAL] {
                assert!(p.bytes().any(|b| class.contains(&b)), "{p}");
            }
            assert!(
                p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
            );
            assert!(seen.insert(p.to_owned()), "repeated password");
        }
        let short = generate_password(PasswordLength::try_from(16).unwrap());
        assert_eq!(short.expose_secret().len(), 16);
    }

    #[test]
    fn password_length_is_bounded() {
        assert!(PasswordLength::try_from(15).is_err());
        assert!(PasswordLength::try_from(129).is_err());
        assert_eq!(PasswordLength::try_from(64).unwrap().get(), 64);
    }

    #[test]
    fn debug_hides_credential_values() {
        let creds = Credentials::new().with_secret("password", &SecretString::from("hunter2"));
        let shown = format!("{creds:?}");
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("password"));
    }
}

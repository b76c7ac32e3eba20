//! Generated secrets and the credentials map a binding hands to an app.

use std::fmt;

use rand::Rng;
use rand::distr::{Alphanumeric, SampleString};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

/// Length of generated passwords: 40 alphanumerics is about 238 bits of entropy.
pub const PASSWORD_LEN: usize = 40;

/// A password from the thread-local CSPRNG (ChaCha, seeded from the OS). Alphanumeric only, so
/// it is safe inside URIs, connection strings and shell-quoted config without escaping.
pub fn generate_password() -> SecretString {
    SecretString::from(Alphanumeric.sample_string(&mut rand::rng(), PASSWORD_LEN))
}

/// A random lowercase name of `len` characters starting with a letter, for backend user names
/// and the like: unique, unguessable and a valid identifier everywhere.
pub fn random_name(len: usize) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|i| {
            let set = if i == 0 { LETTERS } else { ALNUM };
            set[rng.random_range(0..set.len())] as char
        })
        .collect()
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

    pub fn from_map(map: Map<String, Value>) -> Self {
        Self(map)
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
    fn passwords_are_long_unique_and_uri_safe() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.expose_secret().len(), PASSWORD_LEN);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(a.expose_secret().chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn random_names_start_with_a_letter() {
        for _ in 0..100 {
            let n = random_name(16);
            assert_eq!(n.len(), 16);
            assert!(n.starts_with(|c: char| c.is_ascii_lowercase()));
        }
    }

    #[test]
    fn debug_hides_credential_values() {
        let creds = Credentials::new().with_secret("password", &SecretString::from("hunter2"));
        let shown = format!("{creds:?}");
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("password"));
    }
}

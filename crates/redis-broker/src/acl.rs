//! The ACL rules a binding's user gets. Apps never get an admin password: every binding is an
//! ACL user of its own, with the dangerous and admin commands taken away and, on the shared
//! server, everything that reaches past the instance's key prefix.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::names::KeyPrefix;

/// Where a user's keys and channels may be.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// The whole server (a dedicated one).
    Server,
    /// `<prefix>:*` on the shared server.
    Prefix(&'a KeyPrefix),
}

/// Taken from everyone: `CONFIG`, `FLUSHALL`, `FLUSHDB`, `KEYS`, `DEBUG`, `ACL SETUSER`,
/// `MONITOR`, `SHUTDOWN`, `CLIENT KILL`, replication and persistence commands.
const NEVER: [&str; 2] = ["-@dangerous", "-@admin"];

/// Also taken on the shared server: commands that see or change what other instances have.
/// `SCAN` and `RANDOMKEY` return any key name and `DBSIZE` counts them all; `PUBSUB` lists
/// every channel; `FUNCTION` and most of `SCRIPT` act on a library all tenants share (a
/// `SCRIPT FLUSH` would break everyone's `EVALSHA`); `MEMORY` reports the whole server.
/// Scripts themselves stay: each command they run is held to the user's key patterns.
const SHARED_NEVER: [&str; 12] = [
    "-@scripting",
    "+eval",
    "+eval_ro",
    "+evalsha",
    "+evalsha_ro",
    "+script|load",
    "+script|exists",
    "-scan",
    "-randomkey",
    "-dbsize",
    "-pubsub",
    "-memory",
];

/// The hex SHA-256 of `password`: what `ACL SETUSER` takes (`#<hash>`), so the password itself
/// never crosses to the server, and what the binding's record keeps to put a lost user back.
pub fn password_hash(password: &SecretString) -> String {
    hex::encode(Sha256::digest(password.expose_secret().as_bytes()))
}

/// The arguments of `ACL SETUSER <user> ...` for a binding: everything reset first, so a
/// repeated call leaves the same user.
pub fn rules(scope: Scope<'_>, hash: &str) -> Vec<String> {
    let mut rules = vec!["reset".to_owned(), "on".to_owned(), format!("#{hash}")];
    match scope {
        Scope::Server => {
            rules.extend(["~*", "&*", "+@all"].map(str::to_owned));
            rules.extend(NEVER.map(str::to_owned));
        }
        Scope::Prefix(prefix) => {
            rules.push(format!("~{prefix}:*"));
            rules.push(format!("&{prefix}:*"));
            rules.push("+@all".to_owned());
            rules.extend(NEVER.map(str::to_owned));
            rules.extend(SHARED_NEVER.map(str::to_owned));
            // `MEMORY USAGE` reads one key, which the key patterns hold.
            rules.push("+memory|usage".to_owned());
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use osb_core::ids::InstanceId;

    #[test]
    fn a_prefix_users_keys_and_channels_stay_under_its_prefix() {
        let prefix = KeyPrefix::for_instance(
            "default",
            &InstanceId::parse("6b1b5cfd-2d33-4a63-9b7c-bb1cd2bc0e5b").unwrap(),
        );
        let rules = rules(Scope::Prefix(&prefix), "ab");
        assert_eq!(rules[..3], ["reset", "on", "#ab"]);
        assert!(rules.contains(&format!("~{prefix}:*")));
        assert!(rules.contains(&format!("&{prefix}:*")));
        assert!(
            !rules
                .iter()
                .any(|r| r == "~*" || r == "&*" || r == "allkeys")
        );
        let all = rules.iter().position(|r| r == "+@all").unwrap();
        let never = rules.iter().position(|r| r == "-@dangerous").unwrap();
        assert!(all < never, "a later +@all would give everything back");
    }

    #[test]
    fn the_hash_is_redis_hex_sha256() {
        let hash = password_hash(&SecretString::from("foo"));
        assert_eq!(
            hash,
            "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        );
    }
}

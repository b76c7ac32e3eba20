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

/// Taken from everyone: `CONFIG`, `FLUSHALL`, `FLUSHDB`, `DEBUG`, `ACL SETUSER`, `MONITOR`,
/// `SHUTDOWN`, `CLIENT KILL`, replication and persistence commands.
const NEVER: [&str; 2] = ["-@dangerous", "-@admin"];

/// Given back on a dedicated server, whose keys are all the tenant's: `INFO` (health checks of
/// Spring Boot, Sidekiq, BullMQ read it), `KEYS` and `SORT`.
const DEDICATED_TOO: [&str; 3] = ["+info", "+keys", "+sort"];

/// Also taken on the shared server: whatever sees or changes what other instances have, or
/// holds the one thread all tenants share.
/// - `SCAN`, `RANDOMKEY` return any key name, `DBSIZE` counts them all, `PUBSUB` lists every
///   channel, `MEMORY` reports the whole server;
/// - `CLIENT TRACKING` (broadcast mode) reports every key written, whoever wrote it;
/// - scripts and functions: a script that loops holds the server for everyone (and one that
///   wrote cannot be killed), and their caches are shared;
/// - `SELECT`, `MOVE`, `COPY`: keys in other databases would escape deprovision's cleanup.
const SHARED_NEVER: [&str; 12] = [
    "-@scripting",
    "-scan",
    "-randomkey",
    "-dbsize",
    "-pubsub",
    "-memory",
    "-client|tracking",
    "-select",
    // Clients that always begin with `SELECT 0` (Predis, Laravel) keep working.
    "+select|0",
    "-move",
    "-copy",
    // `MEMORY USAGE` reads one key, which the key patterns hold.
    "+memory|usage",
];

/// The hex SHA-256 of `password`: what `ACL SETUSER` takes (`#<hash>`), so the password itself
/// never crosses to the server, and what the binding's record keeps to put a lost user back.
pub fn password_hash(password: &SecretString) -> String {
    hex::encode(Sha256::digest(password.expose_secret().as_bytes()))
}

/// The arguments of `ACL SETUSER <user> ...` for a binding: everything reset first, so a
/// repeated call leaves the same user.
pub fn rules(scope: Scope<'_>, hash: &str) -> Vec<String> {
    // `resetchannels` too: a server whose `acl-pubsub-default` is `allchannels` would leave
    // every channel open after `reset`.
    let mut rules: Vec<String> = ["reset", "resetchannels", "on"].map(str::to_owned).into();
    rules.push(format!("#{hash}"));
    match scope {
        Scope::Server => {
            rules.extend(["~*", "&*", "+@all"].map(str::to_owned));
            rules.extend(NEVER.map(str::to_owned));
            rules.extend(DEDICATED_TOO.map(str::to_owned));
        }
        Scope::Prefix(prefix) => {
            rules.push(format!("~{prefix}:*"));
            rules.push(format!("&{prefix}:*"));
            rules.push("+@all".to_owned());
            rules.extend(NEVER.map(str::to_owned));
            rules.extend(SHARED_NEVER.map(str::to_owned));
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
        assert_eq!(rules[..4], ["reset", "resetchannels", "on", "#ab"]);
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

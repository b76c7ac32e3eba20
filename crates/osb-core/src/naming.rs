//! Backend names (databases, vhosts, users, directories, key prefixes) derived from a platform
//! and an OSB id. The mapping is injective: two different (platform, id) pairs never name the
//! same backend object, so one tenant's id can never reach another tenant's data.
//!
//! The output uses only `a-z`, `0-9` and `_`, which every backend accepts as an identifier and
//! which no backend folds by case. How an id is spelled:
//! - a "plain" id (lowercase letters and digits in groups joined by single `-`, as every
//!   platform's GUIDs are) keeps K-PaaS's historical form: `-` becomes `_`. Such a form never
//!   starts with `_` and never holds `__`;
//! - any other id is escaped: a leading `_`, then each character as itself (lowercase letter,
//!   digit) or as `_` and one code character (`A`→`_a`, `-`→`_0`, `.`→`_1`, `_`→`_2`,
//!   `~`→`_3`). The leading `_` sets it apart from every plain form, and the codes are
//!   prefix-free, so two ids never meet.
//!
//! A platform other than `default` (the single-platform setup) comes first, followed by `__`;
//! platform names are plain (checked in config), so the first `__` ends the platform.
//! A name that would reach the backend's length limit is cut to exactly that limit and ends in
//! `_` and a hash of the platform and id; uncut names are always shorter than the limit, so a cut
//! name never equals an uncut one.

use sha2::{Digest, Sha256};

/// The platform of a single-platform broker; its names carry no platform part.
pub const DEFAULT_PLATFORM: &str = "default";

/// Characters of the hash that ends a cut name: 80 bits.
const HASH_LEN: usize = 16;

/// How one broker names one kind of backend object: a fixed prefix and the backend's length
/// limit.
#[derive(Debug, Clone, Copy)]
pub struct NameRule {
    prefix: &'static str,
    max_len: usize,
}

impl NameRule {
    /// `prefix` must be lowercase letters, digits and `_`; `max_len` leaves room for a hash.
    pub const fn new(prefix: &'static str, max_len: usize) -> Self {
        assert!(max_len >= prefix.len() + HASH_LEN + 8, "max_len too small");
        Self { prefix, max_len }
    }

    /// The backend name for `id` of `platform`.
    pub fn name(&self, platform: &str, id: &str) -> String {
        let mut name = String::with_capacity(self.max_len);
        name.push_str(self.prefix);
        if platform != DEFAULT_PLATFORM {
            name.extend(platform.chars().map(|c| if c == '-' { '_' } else { c }));
            name.push_str("__");
        }
        encode_id(id, &mut name);
        if name.len() < self.max_len {
            return name;
        }
        name.truncate(self.max_len - HASH_LEN - 1);
        name.push('_');
        name.push_str(&hash(platform, id));
        name
    }

    /// Whether `name` could be one this rule made: its prefix, its characters, within its
    /// length (for a name read back from a server, a marker or the store before it is used).
    pub fn could_make(&self, name: &str) -> bool {
        name.starts_with(self.prefix)
            && name.len() <= self.max_len
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }
}

/// Whether a platform name is plain: lowercase letters and digits, groups joined by single `-`.
pub fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.split('-').all(|group| {
            !group.is_empty()
                && group
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

fn encode_id(id: &str, out: &mut String) {
    if is_plain(id) {
        out.extend(id.chars().map(|c| if c == '-' { '_' } else { c }));
        return;
    }
    out.push('_');
    for c in id.chars() {
        match c {
            'a'..='z' | '0'..='9' => out.push(c),
            'A'..='Z' => {
                out.push('_');
                out.push(c.to_ascii_lowercase());
            }
            '-' => out.push_str("_0"),
            '.' => out.push_str("_1"),
            '_' => out.push_str("_2"),
            '~' => out.push_str("_3"),
            // Ids are checked to be RFC 3986 unreserved characters before they get here; any
            // other character still gets a code of its own, so the mapping stays injective.
            other => {
                out.push_str("_4");
                out.push_str(&format!("{:x}_", other as u32));
            }
        }
    }
}

/// The first 80 bits of SHA-256 over platform and id, in lowercase base32 (`a-z`, `2-7`).
fn hash(platform: &str, id: &str) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let digest = Sha256::new()
        .chain_update(platform.as_bytes())
        .chain_update([0u8])
        .chain_update(id.as_bytes())
        .finalize();
    let bits = digest[..10]
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    (0..HASH_LEN)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const DB: NameRule = NameRule::new("op_", 64);

    #[test]
    fn platform_guids_keep_kpaas_naming() {
        assert_eq!(
            DB.name("default", "6b1b5cfd-2d33-4a63-9b7c-bb1cd2bc0e5b"),
            "op_6b1b5cfd_2d33_4a63_9b7c_bb1cd2bc0e5b"
        );
    }

    #[test]
    fn ids_that_differ_only_in_separators_or_case_get_different_names() {
        let ids = [
            "tenanta-20518",
            "tenanta_20518",
            "tenantA-20518",
            "tenantA_20518",
            "tenanta.20518",
            "tenanta~20518",
            "tenanta--20518",
            "_tenanta_20518",
            "-tenanta-20518",
            "abc",
            "ABC",
            "aBc",
            "_abc",
            "_2abc",
            "a_0",
            "a-",
            "a.",
        ];
        let mut seen = HashMap::new();
        for platform in ["default", "cf", "k8s", "cf-prod"] {
            for id in ids {
                let name = DB.name(platform, id);
                assert!(
                    name.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                    "{name}"
                );
                if let Some(other) = seen.insert(name.clone(), (platform, id)) {
                    panic!("{other:?} and {:?} both map to {name}", (platform, id));
                }
            }
        }
    }

    #[test]
    fn platform_is_part_of_the_name() {
        assert_eq!(DB.name("cf", "abc"), "op_cf__abc");
        assert_eq!(DB.name("cf-prod", "abc"), "op_cf_prod__abc");
        assert_ne!(DB.name("cf", "abc"), DB.name("default", "abc"));
        assert_ne!(DB.name("cf", "_x"), DB.name("default", "cf__x"));
    }

    #[test]
    fn long_ids_are_cut_to_the_limit_with_a_hash() {
        let user = NameRule::new("b_", 32);
        let a = user.name("default", "6b1b5cfd-2d33-4a63-9b7c-bb1cd2bc0e5b");
        let b = user.name("default", "6b1b5cfd-2d33-4a63-9b7c-bb1cd2bc0e5c");
        assert_eq!(a.len(), 32);
        assert_eq!(b.len(), 32);
        assert_ne!(a, b);
        assert!(a.starts_with("b_6b1b5cfd_2d33"), "{a}");
        // Deterministic: the same id always gives the same name.
        assert_eq!(
            a,
            user.name("default", "6b1b5cfd-2d33-4a63-9b7c-bb1cd2bc0e5b")
        );
        let longest = DB.name("cf", &"Z".repeat(128));
        assert_eq!(longest.len(), 64);
        // An uncut name stays below the limit, so it can never equal a cut one.
        assert!(DB.name("default", &"a".repeat(60)).len() < 64);
        assert_eq!(DB.name("default", &"a".repeat(61)).len(), 64);
    }

    #[test]
    fn plain_names_are_lowercase_groups() {
        for ok in ["cf", "cf-prod", "k8s", "a1-b2-c3"] {
            assert!(is_plain(ok), "{ok}");
        }
        for bad in ["", "-cf", "cf-", "cf--prod", "CF", "cf_prod", "cf.prod"] {
            assert!(!is_plain(bad), "{bad}");
        }
    }
}

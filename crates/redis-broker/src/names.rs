//! Redis names derived from OSB ids, built only here (with osb-core's injective
//! [`NameRule`]): `[a-z0-9_]`, so a name is one argument of a command and never a pattern
//! (`*`, `?`, `[` and `:` cannot occur in a key prefix or an ACL rule made of it).

use std::fmt;

use osb_core::ids::{BindingId, InstanceId};
use osb_core::naming::NameRule;

/// `op_` + the instance id: the key prefix of a shared instance (`<prefix>:*`), and a local
/// instance's directory.
const PREFIXES: NameRule = NameRule::new("op_", KeyPrefix::MAX_LEN);

/// `b_` + the binding id: the binding's ACL user. Derived, so unbind finds it even when the
/// bind that made it died before recording anything.
const USERS: NameRule = NameRule::new("b_", 64);

/// A shared instance's key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// The longest a prefix is (a long id's is cut to it, with a hash).
    pub const MAX_LEN: usize = 64;

    pub fn for_instance(platform: &str, id: &InstanceId) -> Self {
        Self(PREFIXES.name(platform, id.as_str()))
    }

    /// A prefix read back from the store or a marker, if it is one the rule makes.
    pub fn recorded(raw: &str) -> Option<Self> {
        PREFIXES.could_make(raw).then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A binding's ACL user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclUser(String);

impl AclUser {
    pub fn for_binding(platform: &str, id: &BindingId) -> Self {
        Self(USERS.name(platform, id.as_str()))
    }

    /// A user name read back from a server or a marker, if it is one the rule makes.
    pub fn recorded(raw: &str) -> Option<Self> {
        USERS.could_make(raw).then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AclUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_and_never_patterns() {
        let id = InstanceId::parse("A.b~C_d-E").unwrap();
        let prefix = KeyPrefix::for_instance("default", &id);
        assert!(KeyPrefix::recorded(prefix.as_str()).is_some(), "{prefix}");
        let binding = BindingId::parse("6b1b5cfd-2d33-4a63-9b7c-bb1cd2bc0e5b").unwrap();
        assert_eq!(
            AclUser::for_binding("default", &binding).as_str(),
            "b_6b1b5cfd_2d33_4a63_9b7c_bb1cd2bc0e5b"
        );
        assert!(AclUser::recorded("default").is_none());
        assert!(KeyPrefix::recorded("op_*").is_none());
    }
}

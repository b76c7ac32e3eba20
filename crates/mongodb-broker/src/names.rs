//! MongoDB names derived from OSB ids, built only here (with osb-core's injective
//! [`NameRule`]): `[a-z0-9_]`, so never one of the characters MongoDB forbids in database
//! names (`/\. "$*<>:|?` and NUL), and lowercase, as MongoDB refuses two databases whose names
//! differ only in case.

use std::fmt;

use osb_core::BrokerError;
use osb_core::ids::{BindingId, InstanceId};
use osb_core::naming::NameRule;

/// `op_` + the instance id, within MongoDB's 63 bytes for a database name.
const DATABASES: NameRule = NameRule::new("op_", 63);

/// `b_` + the binding id. Derived, not random, so that unbind and deprovision find a binding's
/// user even when the bind that made it died before recording anything.
const USERS: NameRule = NameRule::new("b_", 64);

/// A database name the broker made (or would make) for an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseName(String);

impl DatabaseName {
    pub fn for_instance(platform: &str, id: &InstanceId) -> Self {
        Self(DATABASES.name(platform, id.as_str()))
    }

    /// A name read back from the state store or a marker: it must be one the rule makes.
    pub fn recorded(raw: &str) -> Result<Self, BrokerError> {
        if DATABASES.could_make(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(BrokerError::Failed(format!(
                "recorded database name {raw:?} is not one this broker makes"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatabaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The user a binding gets, in its instance's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn for_binding(platform: &str, id: &BindingId) -> Self {
        Self(USERS.name(platform, id.as_str()))
    }

    /// A name read back from the server or a marker: it must be one the rule makes.
    pub fn recorded(raw: &str) -> Option<Self> {
        USERS.could_make(raw).then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_for_mongodb_and_within_its_limit() {
        let id = InstanceId::parse("5f0c8a2e-2b5e-4c83-9d4b-3f2a1c0e9b7d").unwrap();
        let db = DatabaseName::for_instance("default", &id);
        assert_eq!(db.as_str(), "op_5f0c8a2e_2b5e_4c83_9d4b_3f2a1c0e9b7d");
        let long = InstanceId::parse(&"A.b".repeat(30)).unwrap();
        let db = DatabaseName::for_instance("cf", &long);
        assert!(db.as_str().len() <= 63, "{db}");
        assert!(
            db.as_str()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert!(DatabaseName::recorded(db.as_str()).is_ok());
        assert!(DatabaseName::recorded("admin").is_err());
        let user = UserName::for_binding("default", &BindingId::parse("b-1").unwrap());
        assert_eq!(UserName::recorded(user.as_str()), Some(user));
        assert_eq!(UserName::recorded("root"), None);
    }
}

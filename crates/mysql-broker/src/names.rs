//! MySQL identifiers derived from OSB ids: built once here (with osb-core's injective
//! [`NameRule`]), so SQL is only ever built from these types, never from a raw string.

use std::fmt;

use osb_core::BrokerError;
use osb_core::ids::{BindingId, InstanceId};
use osb_core::naming::NameRule;

/// `op_` + the instance id (`-` as `_` for platform GUIDs): K-PaaS's historical naming, so
/// existing databases keep their names. MySQL allows 64 characters.
const DATABASES: NameRule = NameRule::new("op_", 64);

/// `b_` + the binding id, cut with a hash to MySQL's 32-character account names. Derived, not
/// random, so that unbind and deprovision find a binding's account even when the bind that
/// made it died before recording anything.
const USERS: NameRule = NameRule::new("b_", 32);

/// A database name: lowercase letters, digits and `_` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseName(String);

impl DatabaseName {
    pub fn for_instance(platform: &str, id: &InstanceId) -> Self {
        Self(DATABASES.name(platform, id.as_str()))
    }

    /// A name the state store recorded for an instance: letters, digits and `_` (databases made
    /// before the naming rule may hold uppercase letters), at most 64.
    pub fn recorded(raw: &str) -> Result<Self, BrokerError> {
        if raw.is_empty()
            || raw.len() > 64
            || !raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(BrokerError::Failed(format!(
                "recorded database name {raw:?} is not one this broker makes"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Backtick-quoted for SQL; safe because the name holds no backtick.
    pub fn quoted(&self) -> String {
        format!("`{}`", self.0)
    }

    /// The name in a GRANT, with `_` escaped: unescaped, `_` is a wildcard there and `op_a_b`
    /// would also grant `opXaYb`.
    pub fn grant_pattern(&self) -> String {
        format!("`{}`", self.grant_pattern_value())
    }

    /// How the escaped name is stored in `mysql.db`.
    pub fn grant_pattern_value(&self) -> String {
        self.0.replace('_', "\\_")
    }
}

/// A name the server reported (a table an app created, ...), backtick-quoted for SQL with
/// any backtick in it doubled, as MySQL requires: safe whatever the name holds.
pub fn quote_identifier(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A MySQL account name: lowercase letters, digits and `_`, at most 32 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn for_binding(platform: &str, id: &BindingId) -> Self {
        Self(USERS.name(platform, id.as_str()))
    }

    /// An account name the server reported.
    pub fn parse(raw: &str) -> Result<Self, BrokerError> {
        if raw.is_empty()
            || raw.len() > 32
            || !raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(BrokerError::Failed(format!(
                "account name {raw:?} on the server is not one this broker makes"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `'name'@'%'` for SQL; safe because the name holds only letters, digits and `_`.
    pub fn account(&self) -> String {
        format!("'{}'@'%'", self.0)
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
    fn database_name_follows_kpaas_naming() {
        let id = InstanceId::parse("6b1b5cfd-2d33-4a63-9b7c-bb1cd2bc0e5b").unwrap();
        assert_eq!(
            DatabaseName::for_instance("default", &id).as_str(),
            "op_6b1b5cfd_2d33_4a63_9b7c_bb1cd2bc0e5b"
        );
    }

    #[test]
    fn every_valid_id_names_a_distinct_database() {
        let ids = [
            "tenantA-20518",
            "tenantA_20518",
            "a.b",
            "a~b",
            &"a".repeat(128),
        ];
        let names: std::collections::HashSet<String> = ids
            .iter()
            .map(|raw| {
                let name = DatabaseName::for_instance("default", &InstanceId::parse(raw).unwrap());
                assert!(name.as_str().len() <= 64, "{name:?}");
                name.as_str().to_owned()
            })
            .collect();
        assert_eq!(names.len(), ids.len());
    }

    #[test]
    fn server_reported_names_are_quoted_safely() {
        assert_eq!(quote_identifier("t"), "`t`");
        assert_eq!(
            quote_identifier("a`; DROP DATABASE x; --"),
            "`a``; DROP DATABASE x; --`"
        );
    }

    #[test]
    fn binding_user_names_fit_mysql_and_parse_back() {
        let id = BindingId::parse("6b1b5cfd-2d33-4a63-9b7c-bb1cd2bc0e5b").unwrap();
        let u = UserName::for_binding("default", &id);
        assert!(u.as_str().len() <= 32);
        assert_eq!(UserName::parse(u.as_str()).unwrap(), u);
        assert_ne!(u, UserName::for_binding("cf", &id));
        assert!(UserName::parse("x'; DROP").is_err());
    }
}

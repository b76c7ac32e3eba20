//! RabbitMQ names derived from OSB ids, built only here (with osb-core's injective
//! [`NameRule`]): `[a-z0-9_]`, so a name never needs more than its URL-encoding in an API path.

use std::fmt;

use osb_core::ids::{BindingId, InstanceId};
use osb_core::naming::NameRule;

/// Longest name: its marker's key (`kpaas-broker.vhost.<name>`) must stay within the 255
/// characters of a global parameter's name (an Erlang atom on the server).
const MAX: usize = 255 - "kpaas-broker.vhost.".len();

/// `op_` + the instance id: the instance's vhost.
const VHOSTS: NameRule = NameRule::new("op_", MAX);

/// `b_` + the binding id: derived, so unbind and deprovision find a binding's user even when
/// the bind that made it died before recording anything.
const USERS: NameRule = NameRule::new("b_", MAX);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostName(String);

impl VhostName {
    pub fn for_instance(platform: &str, id: &InstanceId) -> Self {
        Self(VHOSTS.name(platform, id.as_str()))
    }

    /// A vhost name read back from the server or a marker, if it is one the rule makes.
    pub fn recorded(raw: &str) -> Option<Self> {
        VHOSTS.could_make(raw).then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn for_binding(platform: &str, id: &BindingId) -> Self {
        Self(USERS.name(platform, id.as_str()))
    }

    pub fn recorded(raw: &str) -> Option<Self> {
        USERS.could_make(raw).then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VhostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
    fn names_are_plain() {
        let id = InstanceId::parse("5f0c8a2e-2b5e-4c83-9d4b-3f2a1c0e9b7d").unwrap();
        let vhost = VhostName::for_instance("default", &id);
        assert_eq!(vhost.as_str(), "op_5f0c8a2e_2b5e_4c83_9d4b_3f2a1c0e9b7d");
        assert_eq!(VhostName::recorded(vhost.as_str()), Some(vhost));
        assert_eq!(VhostName::recorded("/"), None);
        let user = UserName::for_binding("cf", &BindingId::parse("B.1").unwrap());
        assert!(UserName::recorded(user.as_str()).is_some(), "{user}");
        assert_eq!(UserName::recorded("guest"), None);
    }
}

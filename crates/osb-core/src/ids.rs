//! Ids that arrive in URLs, parsed once so that nothing downstream handles a raw string.

use std::fmt;
use std::marker::PhantomData;

use crate::error::OsbError;

/// Longest id accepted from a URL. Platforms send GUIDs (36 characters); the margin leaves room
/// for other id schemes while keeping every derived backend name bounded.
pub const MAX_ID_LEN: usize = 128;

/// The kind of thing an [`Id`] names; it only picks the words used in error messages.
pub trait IdKind {
    const WHAT: &'static str;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceTag {}
impl IdKind for InstanceTag {
    const WHAT: &'static str = "instance_id";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingTag {}
impl IdKind for BindingTag {
    const WHAT: &'static str = "binding_id";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationTag {}
impl IdKind for OperationTag {
    const WHAT: &'static str = "operation";
}

/// An id made only of RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`), 1 to
/// [`MAX_ID_LEN`] long. The spec recommends exactly this set; accepting nothing else means an id
/// can never carry quotes, separators or control bytes into a backend name.
pub struct Id<K> {
    value: String,
    kind: PhantomData<K>,
}

pub type InstanceId = Id<InstanceTag>;
pub type BindingId = Id<BindingTag>;
pub type OperationId = Id<OperationTag>;

impl<K: IdKind> Id<K> {
    pub fn parse(raw: &str) -> Result<Self, OsbError> {
        if raw.is_empty() || raw.len() > MAX_ID_LEN {
            return Err(OsbError::BadRequest(format!(
                "{} must be 1 to {MAX_ID_LEN} characters long",
                K::WHAT
            )));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
        {
            return Err(OsbError::BadRequest(format!(
                "{} may only contain letters, digits, '-', '.', '_' and '~' (found {bad:?})",
                K::WHAT
            )));
        }
        Ok(Self {
            value: raw.to_owned(),
            kind: PhantomData,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl OperationId {
    /// A fresh operation id for an operation this broker starts.
    pub fn generate() -> Self {
        Self {
            value: uuid::Uuid::new_v4().to_string(),
            kind: PhantomData,
        }
    }
}

impl<K> Clone for Id<K> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}
impl<K> Eq for Id<K> {}

impl<K> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl<K> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.value, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_is_accepted() {
        let id = InstanceId::parse("6b1b5cfd-2d33-4a63-9b7c-bb1cd2bc0e5b").unwrap();
        assert_eq!(id.as_str(), "6b1b5cfd-2d33-4a63-9b7c-bb1cd2bc0e5b");
    }

    #[test]
    fn hostile_ids_are_rejected() {
        let long = "a".repeat(MAX_ID_LEN + 1);
        for bad in [
            "", "a'b", "a`b", "a;b", "a b", "a%00", "a\0b", "ünï", "a/b", "a\"b", &long,
        ] {
            assert!(BindingId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn error_names_the_field() {
        let err = BindingId::parse("x;y").unwrap_err();
        assert!(err.to_string().contains("binding_id"));
    }
}

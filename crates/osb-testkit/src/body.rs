//! What every answer's body must be beyond parsing as JSON.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The first key found twice in one object of `text`, if any. JSON leaves duplicates
/// undefined: one client reads the first, another the last (`serde_json::Value`, which the
/// checks parse bodies into, keeps the last and so cannot see them).
pub fn duplicate_key(text: &str) -> Option<String> {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_str(text);
    // A body that is not JSON fails its parse elsewhere, with the parser's own message.
    Walk(&mut found).deserialize(&mut de).ok()?;
    found
}

/// Visits every value, noting the first key an object repeats.
struct Walk<'a>(&'a mut Option<String>);

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Walk(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value_seed(Walk(&mut *self.0))?;
            if !seen.insert(key.clone()) && self.0.is_none() {
                *self.0 = Some(key);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::duplicate_key;

    #[test]
    fn a_key_twice_in_any_object_is_found_escaped_or_not() {
        assert_eq!(duplicate_key(r#"{"a":1,"b":{"c":[1,{"d":2}]}}"#), None);
        assert_eq!(
            duplicate_key(r#"{"a":1,"b":2,"a":3}"#).as_deref(),
            Some("a")
        );
        assert_eq!(
            duplicate_key(r#"{"x":[{"k":null,"k":true}]}"#).as_deref(),
            Some("k")
        );
        assert_eq!(
            duplicate_key(r#"{"credentials":{},"\u0063redentials":{}}"#).as_deref(),
            Some("credentials")
        );
        // The same key in two objects is no duplicate.
        assert_eq!(duplicate_key(r#"[{"a":1},{"a":2}]"#), None);
        assert_eq!(duplicate_key("not json"), None);
    }
}

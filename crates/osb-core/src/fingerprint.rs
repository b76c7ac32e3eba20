//! What makes two requests "the same" for the spec's idempotency rules.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// SHA-256 of the canonical JSON of `value`: object keys sorted at every level, so key order in
/// the request does not matter. Sorted here rather than trusted to serde_json's map: a crate in
/// the same build (bson, through the mongodb driver) turns on serde_json's `preserve_order`,
/// and every map then keeps the order it was sent in.
pub fn fingerprint(value: &Value) -> String {
    hex::encode(Sha256::digest(sorted(value).to_string().as_bytes()))
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect::<Map<String, Value>>(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_matter() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"x":1,"y":[{"q":1,"p":2}]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":{"y":[{"p":2,"q":1}],"x":1},"a":1}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&json!({"a": 2})));
    }

    #[test]
    fn fingerprints_are_those_stores_already_hold() {
        // The canonical form is serde_json's sorted output, as before the sorting moved here:
        // fingerprints recorded by earlier versions still match.
        let value = json!({"b": 1, "a": {"d": true, "c": null}});
        assert_eq!(
            sorted(&value).to_string(),
            r#"{"a":{"c":null,"d":true},"b":1}"#
        );
    }
}

//! Canonical JSON: the byte form an object is named by.
//!
//! Object keys are sorted recursively, there is no insignificant whitespace,
//! and numbers are written exactly as serde_json writes them. Two values that
//! are equal as JSON therefore always produce the same bytes and the same name.

use serde::Serialize;
use serde_json::{Map, Value};

/// blake3 of `bytes`, as lowercase hex: the name of an object.
pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The canonical bytes of any serializable value.
pub fn to_canonical_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    value_to_canonical_bytes(&value)
}

/// The canonical bytes of a JSON value.
pub fn value_to_canonical_bytes(value: &Value) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&sorted(value))
}

/// A copy of `value` whose objects have their keys inserted in sorted order.
/// Inserting in order (rather than relying on `Map` being a BTreeMap) keeps
/// the output sorted even if some crate in the build turns on serde_json's
/// `preserve_order` feature.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let mut out = Map::new();
            for (key, item) in entries {
                out.insert(key.clone(), sorted(item));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Whether `id` has the shape of an object name (64 lowercase hex digits).
/// Checked before an id is turned into a path, so that an id read from an
/// index or an import file can never point outside the store.
pub fn is_object_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_recursively_without_whitespace() {
        let value = json!({"b": 1, "a": {"z": [3, {"y": true, "x": null}], "c": "s"}});
        let bytes = value_to_canonical_bytes(&value).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"a":{"c":"s","z":[3,{"x":null,"y":true}]},"b":1}"#
        );
    }

    #[test]
    fn equal_values_get_equal_names_whatever_the_key_order() {
        let a: Value = serde_json::from_str(r#"{"x": 1.5, "y": [1, 2]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "y":[1,2],"x":1.5 }"#).unwrap();
        let ha = hash_hex(&value_to_canonical_bytes(&a).unwrap());
        let hb = hash_hex(&value_to_canonical_bytes(&b).unwrap());
        assert_eq!(ha, hb);
        assert!(is_object_id(&ha));
    }

    /// Objects travel between machines as text (export/import): parsing
    /// must give back the exact f64 that was written, or the re-hash on
    /// import refuses good objects. serde_json's default float parser can
    /// be one ULP off; the workspace enables `float_roundtrip`.
    #[test]
    fn every_float_survives_text_and_back() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let values: Vec<f64> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Measurement-like magnitudes with full 53-bit mantissas.
                (x >> 11) as f64 / (1u64 << 53) as f64 * 10f64.powi((x % 12) as i32 - 4)
            })
            .collect();
        let value = serde_json::to_value(&values).unwrap();
        let first = value_to_canonical_bytes(&value).unwrap();
        let reparsed: Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(
            hash_hex(&first),
            hash_hex(&value_to_canonical_bytes(&reparsed).unwrap())
        );
    }

    #[test]
    fn canonical_bytes_survive_a_parse_round_trip() {
        let value = json!({"f": 0.1, "g": 1e300, "h": -0.0, "i": u64::MAX, "j": -7});
        let first = value_to_canonical_bytes(&value).unwrap();
        let reparsed: Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(first, value_to_canonical_bytes(&reparsed).unwrap());
    }

    #[test]
    fn object_id_shape_is_checked() {
        assert!(!is_object_id("../../etc/passwd"));
        assert!(!is_object_id(&"A".repeat(64)));
        assert!(!is_object_id(&"a".repeat(63)));
        assert!(is_object_id(&"0f".repeat(32)));
    }
}

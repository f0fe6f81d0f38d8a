//! The rows vantage6 stores for a `node_info_update` payload.
//!
//! vantage6 4.x (`on_node_info_update`) turns the node's configuration dict
//! into `nodeconfig (node_id, key, value)` rows:
//! - a list value gives one row per element, under the same key;
//! - a dict value gives one row per inner key (an inner list gives one row
//!   per element, under the inner key);
//! - anything else gives one row.
//!
//! Values keep their JSON type here, so that the store can bind them the way
//! SQLAlchemy does (the database then renders them into the string column
//! exactly as it does for the reference).

use serde_json::{Map, Value};

/// One value of a `nodeconfig` row, before the database turns it into text.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    /// JSON `null`.
    Null,
    /// JSON `true`/`false`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string.
    Text(String),
    /// A nested list or object, which the reference cannot store (its
    /// handler fails); we store its compact JSON text instead.
    Json(String),
}

impl ConfigValue {
    fn from_json(value: &Value) -> Self {
        match value {
            Value::Null => ConfigValue::Null,
            Value::Bool(b) => ConfigValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => ConfigValue::Int(i),
                // u64 beyond i64 and floats.
                None => match n.as_f64() {
                    Some(f) if n.is_f64() => ConfigValue::Float(f),
                    _ => ConfigValue::Text(n.to_string()),
                },
            },
            Value::String(s) => ConfigValue::Text(s.clone()),
            Value::Array(_) | Value::Object(_) => ConfigValue::Json(value.to_string()),
        }
    }
}

/// One `nodeconfig` row (without the node id).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigRow {
    /// `nodeconfig.key`.
    pub key: String,
    /// `nodeconfig.value`, still typed.
    pub value: ConfigValue,
}

/// Flattens a `node_info_update` payload into rows, in the reference's order.
pub fn flatten(config: &Map<String, Value>) -> Vec<ConfigRow> {
    let mut rows = Vec::new();
    for (key, value) in config {
        match value {
            Value::Array(items) => push_each(&mut rows, key, items),
            Value::Object(inner) => {
                for (inner_key, inner_value) in inner {
                    match inner_value {
                        Value::Array(items) => push_each(&mut rows, inner_key, items),
                        other => push(&mut rows, inner_key, other),
                    }
                }
            }
            other => push(&mut rows, key, other),
        }
    }
    rows
}

fn push_each(rows: &mut Vec<ConfigRow>, key: &str, items: &[Value]) {
    for item in items {
        push(rows, key, item);
    }
}

fn push(rows: &mut Vec<ConfigRow>, key: &str, value: &Value) {
    rows.push(ConfigRow {
        key: key.to_owned(),
        value: ConfigValue::from_json(value),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys_values(v: Value) -> Vec<(String, ConfigValue)> {
        let Value::Object(map) = v else {
            panic!("test payload must be an object")
        };
        flatten(&map)
            .into_iter()
            .map(|r| (r.key, r.value))
            .collect()
    }

    #[test]
    fn flattens_like_vantage6() {
        let rows = keys_values(json!({
            "encryption": false,
            "allowed_algorithms": ["a", "b"],
            "database_labels": [],
            "database_types": {"db_type_default": "csv", "db_type_x": "sql"},
            "database_columns": {"columns_default": ["age", "bmi"]},
            "threshold": 0.5,
        }));
        assert_eq!(
            rows,
            vec![
                ("encryption".into(), ConfigValue::Bool(false)),
                ("allowed_algorithms".into(), ConfigValue::Text("a".into())),
                ("allowed_algorithms".into(), ConfigValue::Text("b".into())),
                ("db_type_default".into(), ConfigValue::Text("csv".into())),
                ("db_type_x".into(), ConfigValue::Text("sql".into())),
                ("columns_default".into(), ConfigValue::Text("age".into())),
                ("columns_default".into(), ConfigValue::Text("bmi".into())),
                ("threshold".into(), ConfigValue::Float(0.5)),
            ]
        );
    }

    #[test]
    fn nested_containers_become_json_text() {
        let rows = keys_values(
            json!({"x": [[1, 2], {"a": 1}], "n": null, "big": 18446744073709551615u64}),
        );
        assert_eq!(
            rows,
            vec![
                ("x".into(), ConfigValue::Json("[1,2]".into())),
                ("x".into(), ConfigValue::Json("{\"a\":1}".into())),
                ("n".into(), ConfigValue::Null),
                (
                    "big".into(),
                    ConfigValue::Text("18446744073709551615".into())
                ),
            ]
        );
    }
}

//! Reader keys from values: SQL equality of the values, or, for a key column with a
//! collation (MySQL text), the text's weights under it ([`larder_sql::collation`]). The
//! writer keys rows and a read keys its parameters through the same [`KeyCollations`], so the
//! two always agree.

use std::sync::Arc;

use larder_sql::collation::Collation;
use larder_sql::plan::CachePlan;
use larder_sql::value::{Key, KeyPart, Value};

/// Per key column, its collation if it has one; empty when no column has one.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyCollations(Arc<[Option<Arc<Collation>>]>);

impl KeyCollations {
    pub(crate) fn of(plan: &CachePlan) -> KeyCollations {
        if plan.key_collations.iter().all(Option::is_none) {
            return KeyCollations::default();
        }
        KeyCollations(plan.key_collations.clone().into())
    }

    /// The key of a key column's values, or `None` when a collated column holds a value its
    /// collation cannot key (a character of unknown weight, or a value that is not text).
    pub(crate) fn key<'a>(&self, values: impl IntoIterator<Item = &'a Value>) -> Option<Key> {
        if self.0.is_empty() {
            return Some(Key::from_values(values));
        }
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| match self.0.get(i) {
                Some(Some(c)) => c.key_part(v),
                _ => Some(KeyPart::from_value(v)),
            })
            .collect::<Option<Vec<_>>>()
            .map(Key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collated_columns_key_by_weights_and_others_by_value() {
        let ci = Collation::from_weights(
            "utf8mb4_general_ci",
            (0u32..128).map(|c| (c, vec![0, (c as u8).to_ascii_uppercase()])),
        )
        .unwrap();
        let keys = KeyCollations(vec![None, Some(Arc::new(ci))].into());
        let k = |a: i64, b: &str| keys.key(&[Value::Int(a), Value::Text(b.into())]);
        assert_eq!(k(1, "abc"), k(1, "ABC "));
        assert_ne!(k(1, "abc"), k(2, "abc"));
        assert_eq!(k(1, "é"), None);
        assert_eq!(keys.key(&[Value::Int(1), Value::Int(5)]), None);
        assert!(KeyCollations::default()
            .key(&[Value::Text("é".into())])
            .is_some());
    }
}

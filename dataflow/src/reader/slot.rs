//! How a reader's table holds its keys: a key of one integer (a key on an integer column, the
//! common `WHERE id = ?`) inline, without the key's own heap vector; any other key as it is.
//! A read looks a [`Key`] up without building a [`SlotKey`]: the two hash alike, and a `Key`
//! compares equal to the slot that holds it ([`hashbrown::Equivalent`]).

use std::hash::{Hash, Hasher};

use larder_sql::value::{Key, KeyPart};

#[derive(Clone, Debug)]
pub(crate) enum SlotKey {
    Int(i64),
    Key(Key),
}

impl SlotKey {
    pub(crate) fn new(key: Key) -> SlotKey {
        match key.0.as_slice() {
            [KeyPart::Int(i)] => SlotKey::Int(*i),
            _ => SlotKey::Key(key),
        }
    }

    /// The key it holds.
    pub(crate) fn to_key(&self) -> Key {
        match self {
            SlotKey::Int(i) => Key(vec![KeyPart::Int(*i)]),
            SlotKey::Key(k) => k.clone(),
        }
    }

    /// Whether it holds `key`.
    fn holds(&self, key: &Key) -> bool {
        match (self, key.0.as_slice()) {
            (SlotKey::Int(i), [KeyPart::Int(j)]) => i == j,
            (SlotKey::Int(_), _) => false,
            (SlotKey::Key(k), _) => k == key,
        }
    }
}

/// Hashes as the [`Key`] it holds (a key hashes as the slice of its parts).
impl Hash for SlotKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            SlotKey::Int(i) => [KeyPart::Int(*i)][..].hash(state),
            SlotKey::Key(k) => k.hash(state),
        }
    }
}

impl PartialEq for SlotKey {
    fn eq(&self, other: &Self) -> bool {
        match other {
            SlotKey::Int(i) => matches!(self, SlotKey::Int(j) if i == j),
            SlotKey::Key(k) => self.holds(k),
        }
    }
}

impl Eq for SlotKey {}

impl hashbrown::Equivalent<SlotKey> for Key {
    fn equivalent(&self, slot: &SlotKey) -> bool {
        slot.holds(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn a_slot_hashes_and_compares_as_its_key() {
        let hasher = std::hash::BuildHasherDefault::<rustc_hash::FxHasher>::default();
        for key in [
            Key(vec![KeyPart::Int(7)]),
            Key(vec![KeyPart::Int(7), KeyPart::Int(8)]),
            Key(vec![KeyPart::Text("x".into())]),
            Key(vec![]),
        ] {
            let slot = SlotKey::new(key.clone());
            assert_eq!(hasher.hash_one(&slot), hasher.hash_one(&key), "{key:?}");
            assert!(hashbrown::Equivalent::equivalent(&key, &slot));
            assert_eq!(slot.to_key(), key);
        }
        assert!(matches!(
            SlotKey::new(Key(vec![KeyPart::Int(1)])),
            SlotKey::Int(1)
        ));
        let one = Key(vec![KeyPart::Int(1)]);
        assert!(!hashbrown::Equivalent::equivalent(
            &one,
            &SlotKey::new(Key(vec![KeyPart::Int(2)]))
        ));
        assert!(!hashbrown::Equivalent::equivalent(
            &Key(vec![KeyPart::Int(1), KeyPart::Int(1)]),
            &SlotKey::new(one)
        ));
    }
}

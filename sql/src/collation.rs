//! MySQL collations for reader keys: `WHERE name = ?` on a `_ci` column matches every row
//! whose text the collation equates with the parameter (`'abc'`, `'ABC'`, `'abc  '`), so the
//! reader groups rows by the text's *weights* under the column's collation, and a read looks
//! its parameter up by the same weights.
//!
//! Larder does not carry collation tables of its own. The upstream gives them: the weight of
//! each character as `WEIGHT_STRING` reports it (see `larder_replication::mysql`), so the
//! comparison is the server's by construction. A text's key is the concatenation of its
//! characters' weights, which is exact for collations without contractions (`_bin`,
//! `_general_ci`, `_unicode_ci` and their `_nopad_` forms): [`Collation::supported`] names
//! them. Under PAD SPACE, trailing characters that weigh what a space weighs are dropped,
//! which is what comparing as if the shorter text were padded with spaces means.
//!
//! A character whose weight Larder was not given (outside the fetched range) has no key:
//! a row holding one cannot be placed, and a read asking for one goes upstream.

use crate::value::{KeyPart, Value};

/// No weight known for this code point (outside the table, or not in the character set).
const UNKNOWN: u32 = u32::MAX;

/// Code points a weight table covers: the Basic Multilingual Plane.
pub const TABLE_CODE_POINTS: u32 = 0x1_0000;

/// Bytes a weight table may hold (every BMP character at up to 32 bytes of weights).
const POOL_MAX_BYTES: usize = 4 << 20;

/// How one collation compares text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collation {
    name: String,
    pad_space: bool,
    weights: Weights,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Weights {
    /// `_bin`: code point order (a UTF-8 text's bytes).
    CodePoint,
    /// Per BMP code point: `offset << 8 | len` into `pool`, or [`UNKNOWN`].
    Table { index: Box<[u32]>, pool: Box<[u8]> },
}

/// Why a weight table was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CollationError {
    #[error("collation {0} is not one Larder can compare exactly (only _bin, _general_ci and _unicode_ci collations, padded or not)")]
    Unsupported(String),
    #[error("the weight table of collation {name} is malformed: {why}")]
    Malformed { name: String, why: String },
}

/// The character set a collation belongs to (`utf8mb4_general_ci` -> `utf8mb4`).
pub fn charset_of(collation: &str) -> &str {
    collation.split('_').next().unwrap_or(collation)
}

impl Collation {
    /// Whether `name` compares text character by character, so that per-character weights
    /// decide equality exactly; and whether it pads with spaces (MariaDB names the collations
    /// that do not `_nopad_`). MySQL 8's `_0900_` collations have contractions and are not.
    pub fn supported(name: &str) -> Result<bool, CollationError> {
        let lower = name.to_ascii_lowercase();
        let charset_ok = matches!(charset_of(&lower), "utf8mb4" | "utf8mb3" | "utf8" | "ascii");
        let rest = lower.split_once('_').map(|(_, r)| r).unwrap_or("");
        let pad_space = !rest.contains("nopad");
        let kind = rest.replace("nopad_", "");
        if charset_ok && matches!(kind.as_str(), "bin" | "general_ci" | "unicode_ci") {
            Ok(pad_space)
        } else {
            Err(CollationError::Unsupported(name.to_string()))
        }
    }

    /// Whether `name` is a `_bin` collation (compared by code point, no table needed).
    pub fn is_binary(name: &str) -> bool {
        name.to_ascii_lowercase().ends_with("_bin")
    }

    /// A `_bin` collation.
    pub fn code_point(name: &str) -> Result<Collation, CollationError> {
        let pad_space = Collation::supported(name)?;
        if !Collation::is_binary(name) {
            return Err(CollationError::Unsupported(name.to_string()));
        }
        Ok(Collation {
            name: name.to_string(),
            pad_space,
            weights: Weights::CodePoint,
        })
    }

    /// A collation from the upstream's weights of single characters: `(code point, weight
    /// bytes)` for code points below [`TABLE_CODE_POINTS`]; code points not given have no
    /// known weight. The space's weight must be given.
    pub fn from_weights(
        name: &str,
        weights: impl IntoIterator<Item = (u32, Vec<u8>)>,
    ) -> Result<Collation, CollationError> {
        let pad_space = Collation::supported(name)?;
        let malformed = |why: String| CollationError::Malformed {
            name: name.to_string(),
            why,
        };
        let mut index = vec![UNKNOWN; TABLE_CODE_POINTS as usize].into_boxed_slice();
        let mut pool = Vec::new();
        for (cp, w) in weights {
            let slot = index
                .get_mut(cp as usize)
                .ok_or_else(|| malformed(format!("code point {cp:#x} is outside the table")))?;
            if w.len() > 0xff || pool.len() + w.len() > POOL_MAX_BYTES {
                return Err(malformed(format!("weights of {cp:#x} are too long")));
            }
            *slot = ((pool.len() as u32) << 8) | w.len() as u32;
            pool.extend_from_slice(&w);
        }
        if index[' ' as usize] == UNKNOWN {
            return Err(malformed("no weight for the space".into()));
        }
        Ok(Collation {
            name: name.to_string(),
            pad_space,
            weights: Weights::Table {
                index,
                pool: pool.into_boxed_slice(),
            },
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes the collation's table takes.
    pub fn size_bytes(&self) -> usize {
        match &self.weights {
            Weights::CodePoint => 0,
            Weights::Table { index, pool } => index.len() * 4 + pool.len(),
        }
    }

    /// The weights of `c`, or `None` when unknown.
    fn weight_of(&self, c: char) -> Option<&[u8]> {
        let Weights::Table { index, pool } = &self.weights else {
            return None;
        };
        let e = *index.get(c as usize)?;
        if e == UNKNOWN {
            return None;
        }
        let (start, len) = ((e >> 8) as usize, (e & 0xff) as usize);
        pool.get(start..start + len)
    }

    /// The key of `text`: equal for exactly the texts the collation equates. `None` when a
    /// character's weight is unknown.
    pub fn key(&self, text: &str) -> Option<Vec<u8>> {
        match &self.weights {
            Weights::CodePoint => {
                let kept = if self.pad_space {
                    text.trim_end_matches(' ')
                } else {
                    text
                };
                Some(kept.as_bytes().to_vec())
            }
            Weights::Table { .. } => {
                let space = self.weight_of(' ')?;
                let mut out = Vec::with_capacity(text.len() * 2);
                // Length of `out` up to its last character that does not weigh a space.
                let mut kept = 0;
                for c in text.chars() {
                    let w = self.weight_of(c)?;
                    out.extend_from_slice(w);
                    let pads = w.is_empty() || (self.pad_space && w == space);
                    if !pads {
                        kept = out.len();
                    }
                }
                if self.pad_space {
                    out.truncate(kept);
                }
                Some(out)
            }
        }
    }

    /// The key part of a value in a column of this collation: NULL stays NULL, text is keyed
    /// by [`Collation::key`]. `None` for a text with an unknown weight and for any other
    /// value (MySQL compares a number with text as numbers).
    pub fn key_part(&self, v: &Value) -> Option<KeyPart> {
        match v {
            Value::Null => Some(KeyPart::Null),
            Value::Text(s) => self.key(s).map(KeyPart::Bytes),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up case-insensitive table over ASCII: letters weigh their upper case, `\u{1}`
    /// is ignorable, `ß` weighs two `S`.
    fn ci(name: &str) -> Collation {
        let mut w: Vec<(u32, Vec<u8>)> = (0u32..128)
            .map(|c| {
                let up = (c as u8).to_ascii_uppercase();
                (c, vec![0, up])
            })
            .collect();
        w[1].1.clear();
        w.push(('ß' as u32, vec![0, b'S', 0, b'S']));
        Collation::from_weights(name, w).unwrap()
    }

    #[test]
    fn equal_keys_for_what_the_collation_equates() {
        let c = ci("utf8mb4_unicode_ci");
        assert_eq!(c.key("abc"), c.key("ABC"));
        assert_eq!(c.key("abc"), c.key("abc   "));
        assert_eq!(c.key("abc"), c.key("a\u{1}bc \u{1} "));
        assert_eq!(c.key("ss"), c.key("ß"));
        assert_ne!(c.key("abc"), c.key(" abc"));
        assert_ne!(c.key("abc"), c.key("abcd"));
        assert_eq!(c.key(""), c.key("  "));
        assert_eq!(c.key("é"), None);
    }

    #[test]
    fn no_pad_keeps_trailing_spaces() {
        let c = ci("utf8mb4_unicode_nopad_ci");
        assert_ne!(c.key("abc"), c.key("abc "));
        assert_eq!(c.key("abc"), c.key("ABC"));
        let b = Collation::code_point("utf8mb4_nopad_bin").unwrap();
        assert_ne!(b.key("a"), b.key("a "));
        let b = Collation::code_point("utf8mb4_bin").unwrap();
        assert_eq!(b.key("a"), b.key("a  "));
        assert_ne!(b.key("a"), b.key("A"));
    }

    #[test]
    fn only_collations_without_contractions() {
        assert_eq!(Collation::supported("utf8mb4_general_ci"), Ok(true));
        assert_eq!(Collation::supported("utf8mb3_general_nopad_ci"), Ok(false));
        assert_eq!(Collation::supported("utf8mb4_nopad_bin"), Ok(false));
        assert!(Collation::supported("utf8mb4_0900_ai_ci").is_err());
        assert!(Collation::supported("utf8mb4_spanish_ci").is_err());
        assert!(Collation::supported("latin1_swedish_ci").is_err());
    }

    #[test]
    fn values_other_than_text_have_no_key() {
        let c = ci("utf8mb4_general_ci");
        assert_eq!(c.key_part(&Value::Null), Some(KeyPart::Null));
        assert_eq!(c.key_part(&Value::Int(5)), None);
        assert!(matches!(
            c.key_part(&Value::Text("x".into())),
            Some(KeyPart::Bytes(_))
        ));
    }

    #[test]
    fn malformed_tables_are_refused() {
        assert!(Collation::from_weights("utf8mb4_general_ci", [(0x41, vec![0, 0x41])]).is_err());
        assert!(Collation::from_weights("utf8mb4_general_ci", [(0x10000, vec![1])]).is_err());
    }
}

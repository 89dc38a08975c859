//! Which upstream tables the operator wants replicated.
//!
//! Patterns are `schema.table` or `table` (any schema), each part may use `*` as a wildcard
//! matching any run of characters. Matching is case-sensitive on the catalog names (unquoted
//! identifiers are lower case in Postgres). An empty filter means every table.

use crate::error::ReplicationError;

const PATTERNS_MAX: usize = 10_000;

#[derive(Clone, Debug, Default)]
pub struct TableFilter {
    patterns: Vec<(Option<String>, String)>,
}

impl TableFilter {
    pub fn new(patterns: &[String]) -> Result<TableFilter, ReplicationError> {
        if patterns.len() > PATTERNS_MAX {
            return Err(ReplicationError::InvalidConfig(format!(
                "at most {PATTERNS_MAX} table filter patterns are allowed"
            )));
        }
        let mut out = Vec::with_capacity(patterns.len());
        for p in patterns {
            let p = p.trim();
            let parsed = match p.split_once('.') {
                Some((s, t)) => (Some(s.to_string()), t.to_string()),
                None => (None, p.to_string()),
            };
            if parsed.1.is_empty() || parsed.0.as_deref() == Some("") || parsed.1.contains('.') {
                return Err(ReplicationError::InvalidConfig(format!(
                    "invalid table filter pattern '{p}': expected 'table' or 'schema.table'"
                )));
            }
            out.push(parsed);
        }
        Ok(TableFilter { patterns: out })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn matches(&self, schema: &str, table: &str) -> bool {
        self.patterns.is_empty()
            || self
                .patterns
                .iter()
                .any(|(s, t)| s.as_deref().is_none_or(|s| glob(s, schema)) && glob(t, table))
    }

    /// Patterns without wildcards, as `(schema, table)`; used to build a `FOR TABLE` list.
    pub fn literal_tables(&self) -> Option<Vec<(String, String)>> {
        self.patterns
            .iter()
            .map(|(s, t)| {
                if t.contains('*') || s.as_deref().is_some_and(|s| s.contains('*')) {
                    None
                } else {
                    Some((s.clone().unwrap_or_else(|| "public".into()), t.clone()))
                }
            })
            .collect()
    }
}

/// `*` matches any (possibly empty) run; everything else matches itself.
fn glob(pattern: &str, s: &str) -> bool {
    let p = pattern.as_bytes();
    let s = s.as_bytes();
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(p: &[&str]) -> TableFilter {
        TableFilter::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn matching() {
        assert!(f(&[]).matches("public", "x"));
        let flt = f(&["orders", "app.user*", "*.audit_*"]);
        assert!(flt.matches("public", "orders"));
        assert!(flt.matches("other", "orders"));
        assert!(flt.matches("app", "users"));
        assert!(!flt.matches("public", "users"));
        assert!(flt.matches("x", "audit_log"));
        assert!(!flt.matches("x", "audit"));
        assert!(glob("a*b*c", "aXXbYc"));
        assert!(!glob("a*b*c", "aXXbY"));
    }

    #[test]
    fn invalid_patterns_and_literals() {
        assert!(TableFilter::new(&["a.b.c".into()]).is_err());
        assert!(TableFilter::new(&[".b".into()]).is_err());
        assert_eq!(
            f(&["orders", "app.users"]).literal_tables(),
            Some(vec![
                ("public".into(), "orders".into()),
                ("app".into(), "users".into())
            ])
        );
        assert_eq!(f(&["order*"]).literal_tables(), None);
    }
}

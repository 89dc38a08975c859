//! What a statement text is: a Larder statement, a SELECT of some shape, or anything else.
//! Shapes are memoized by exact text, and by fingerprint for texts that differ from a known
//! one only in their literals (no parse then; see [`larder_sql::fingerprint`]).

use super::*;

/// The normalized form of a SELECT text.
pub(super) struct Shape {
    pub(super) core: Arc<ShapeCore>,
    /// Where each slot's value comes from in this text.
    pub(super) params: Vec<ParamSource>,
}

impl std::ops::Deref for Shape {
    type Target = ShapeCore;
    fn deref(&self) -> &ShapeCore {
        &self.core
    }
}

/// What every text of one shape shares (texts that differ only in literals: see
/// [`larder_sql::fingerprint`]).
pub(super) struct ShapeCore {
    pub(super) query_id: Arc<str>,
    pub(super) text: String,
    /// Relation names the query does not qualify: they resolve along the session's
    /// `search_path`, and the query id is that of the query with them qualified.
    pub(super) unqualified: Vec<String>,
    /// The last resolution of `unqualified` and the query id it gives.
    pub(super) resolved: std::sync::Mutex<Option<ShapeResolution>>,
    /// Running it upstream could change session settings (it calls a user function).
    pub(super) may_change_settings: bool,
}

impl RouterSession {
    pub(super) fn kind_of(&mut self, sql: &str) -> Arc<Kind> {
        if let Some(k) = self.shapes.get_refresh(sql) {
            return k.clone();
        }
        let larder = parse_larder_statement(sql, Dialect::Postgres);
        let select = larder.is_none() && classify(sql) == StatementKind::Select;
        // A text that differs from a known one only in its literals: no parse.
        let fp = if select && sql.len() <= MEMO_TEXT_MAX_BYTES {
            fingerprint(sql)
        } else {
            None
        };
        if let Some(fp) = &fp {
            if let Some(known) = self.fingerprints.get_refresh(&fp.key) {
                if let Some(params) = known.template.params(&fp.literals) {
                    return Arc::new(Kind::Select(Arc::new(Shape {
                        core: Arc::clone(&known.core),
                        params,
                    })));
                }
            }
        }
        let kind = Arc::new(match larder {
            Some(Ok(stmt)) => Kind::Larder(stmt),
            Some(Err(_)) => Kind::Other,
            None if select => match normalize(sql, Dialect::Postgres) {
                Ok(n) => {
                    let template = fp
                        .as_ref()
                        .and_then(|fp| Template::learn(fp, &n, Dialect::Postgres));
                    // Only unqualified names depend on the session's search_path; a
                    // query that qualifies every name has one id for every session.
                    let core = Arc::new(ShapeCore {
                        query_id: n.query_id.into(),
                        text: n.text,
                        unqualified: unqualified_relations(&n.query),
                        resolved: std::sync::Mutex::new(None),
                        may_change_settings: may_change_settings(&n.query),
                    });
                    if let (Some(fp), Some(template)) = (&fp, template) {
                        let size = fp.key.len() + core_bytes(&core) + 64;
                        let known = Arc::new(KnownShape {
                            core: Arc::clone(&core),
                            template,
                        });
                        let _ = self.fingerprints.insert(&fp.key, known, size, false);
                    }
                    Kind::Select(Arc::new(Shape {
                        core,
                        params: n.params,
                    }))
                }
                Err(_) => Kind::Other,
            },
            None => Kind::Other,
        });
        // Larder statements carry whole parsed queries; don't memo them.
        if !matches!(*kind, Kind::Larder(_)) && sql.len() <= MEMO_TEXT_MAX_BYTES {
            let size = kind_bytes(&kind, sql.len());
            let _ = self.shapes.insert(sql, kind.clone(), size, false);
        }
        kind
    }
}

/// A shape learned for a fingerprint key (see [`RouterSession::kind_of`]).
pub(super) struct KnownShape {
    pub(super) core: Arc<ShapeCore>,
    pub(super) template: Template,
}

/// Bytes a shape's shared part holds.
fn core_bytes(core: &ShapeCore) -> usize {
    std::mem::size_of::<ShapeCore>()
        + core.query_id.len()
        + core.text.len()
        // The names, and the resolution memo (schemas and an id).
        + core.unqualified.iter().map(|n| 2 * n.len() + 64).sum::<usize>()
        + 64
}

/// Bytes charged in the memos for a statement kind, beyond its key (`sql_len` bounds the
/// literals a shape holds; a Larder statement holds a parsed query, several times its text).
pub(super) fn kind_bytes(kind: &Kind, sql_len: usize) -> usize {
    std::mem::size_of::<Kind>()
        + match kind {
            Kind::Select(shape) => {
                std::mem::size_of::<Shape>()
                    + core_bytes(&shape.core)
                    + shape.params.len() * std::mem::size_of::<ParamSource>()
                    + sql_len
            }
            Kind::Larder(_) => 8 * sql_len + 1024,
            Kind::Other => 0,
        }
}

//! What a query's names mean for this session: its relation names resolved along the
//! session's `search_path` with Larder's own catalog, and the query id that gives.

use super::*;

/// How a shape's names resolved, and under what: the same catalog content, session facts and
/// DDL position give the same answer without resolving again.
pub(super) struct ShapeResolution {
    /// (catalog generation, session facts epoch, session DDL position).
    pub(super) key: (u64, u64, u64),
    pub(super) schemas: Vec<String>,
    pub(super) id: Arc<str>,
}

impl RouterSession {
    /// The query id of `shape` as this session means it: its unqualified relation names
    /// resolved along the session's `search_path` with Larder's own catalog (no round trip).
    /// When a fact it needs is unknown, the upstream is asked once and the query goes upstream.
    pub(super) fn session_query_id(
        &mut self,
        session: &SessionState,
        shape: &Shape,
        dispatch: &mut Dispatch<'_>,
    ) -> Result<Arc<str>, String> {
        self.facts.catch_up_defaults(session, self.backend.as_ref());
        match self.resolve_id(shape) {
            Ok(id) => Ok(id),
            Err(None) => {
                // Ask only when a cache could answer: no round trip for queries nothing caches.
                if !shape
                    .unqualified
                    .iter()
                    .any(|n| self.backend.caches_relation_named(n))
                {
                    return Err(format!("no cache for query {}", shape.query_id));
                }
                if self.facts.ask(dispatch) {
                    self.captures.push_back(CaptureKind::Facts);
                }
                Err("learning this session's role and search_path from the upstream".into())
            }
            Err(Some(reason)) => Err(reason),
        }
    }

    /// [`RouterSession::session_query_id`] with what is known now: `Err(None)` when a fact is
    /// unknown, `Err(Some(reason))` when the names do not resolve to relations a cache reads.
    pub(super) fn resolve_id(&self, shape: &Shape) -> Result<Arc<str>, Option<String>> {
        if shape.unqualified.is_empty() {
            return Ok(shape.query_id.clone());
        }
        let (role, path, temp) = self.facts.resolution().ok_or(None)?;
        let key = (
            self.backend.relations_generation(),
            self.facts.epoch(),
            self.ddl_lsn,
        );
        let mut memo = shape.resolved.lock().expect("shape memo poisoned");
        if let Some(r) = &*memo {
            if r.key == key {
                return Ok(r.id.clone());
            }
        }
        let mut schemas = Vec::with_capacity(shape.unqualified.len());
        for name in &shape.unqualified {
            match self
                .backend
                .resolve_relation(path, role, temp, name, self.ddl_lsn)
            {
                Some(Resolved::Schema(s)) => schemas.push(s),
                Some(Resolved::Temp) => {
                    return Err(Some(format!(
                        "{name} is a temporary relation of this session"
                    )))
                }
                Some(Resolved::Missing) => {
                    return Err(Some(format!(
                        "relation {name} does not exist under this session's search_path"
                    )))
                }
                None => {
                    return Err(Some(
                        "Larder's catalog of relations has not caught up with this session's DDL"
                            .into(),
                    ))
                }
            }
        }
        let id: Arc<str> = match &*memo {
            Some(r) if r.schemas == schemas => r.id.clone(),
            _ => {
                let schema_of = |n: &str| {
                    let i = shape.unqualified.iter().position(|u| u == n)?;
                    schemas.get(i).cloned()
                };
                resolved_query_id_of_text(&shape.text, &schema_of)
                    .ok_or_else(|| {
                        Some("the query's relation names could not be qualified".to_string())
                    })?
                    .into()
            }
        };
        *memo = Some(ShapeResolution {
            key,
            schemas,
            id: Arc::clone(&id),
        });
        Ok(id)
    }
}

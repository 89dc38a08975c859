//! What a query means for the session that creates a cache: catching up with the upstream,
//! then qualifying its relation names along the session's `search_path`; and stored caches' queries.

use super::*;

/// How long `CREATE CACHE` waits for replication to catch up with the upstream (and so with
/// the creating session's own DDL) before it gives up.
const CATCH_UP_MAX_MS: u64 = 10_000;

impl Controller {
    /// The query as the creating session means it: first replication and Larder's catalog of
    /// relations catch up with everything committed upstream so far (the session's own DDL
    /// included), then every unqualified relation name is qualified as it resolves along the
    /// session's `search_path`. Returns the qualified text and its normalized form, whose id
    /// is the one every session that means the same query computes.
    pub(super) async fn for_session(
        &self,
        text: &str,
        normalized: Normalized,
        ctx: &StatementContext,
    ) -> Result<(String, Normalized), ControllerError> {
        if self.dialect == Dialect::MySql {
            return self.for_mysql_session(text, ctx).await;
        }
        let names = larder_sql::identity::unqualified_relations(&normalized.query);
        let target = self.upstream_position().await?;
        let deadline = std::time::Instant::now() + Duration::from_millis(CATCH_UP_MAX_MS);
        let snapshot = loop {
            let applied = self.core.status.applied_lsn.load(Ordering::SeqCst) >= target;
            match self.relations.current(target) {
                Some(s) if applied => break s,
                _ if std::time::Instant::now() >= deadline => {
                    return Err(ControllerError::Unavailable(format!(
                        "replication has not caught up with the upstream within {CATCH_UP_MAX_MS} ms; try again"
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        if names.is_empty() {
            return Ok((text.to_string(), normalized));
        }
        let role = ctx.role.as_deref().unwrap_or(&ctx.session_user);
        let default_path;
        let path: &[PathEntry] = match &ctx.search_path {
            Some(p) => p,
            None => {
                let defaults = self
                    .core
                    .search_path_defaults
                    .read()
                    .expect("defaults lock");
                default_path = defaults
                    .as_ref()
                    .and_then(|d| {
                        search_path::parse_value(d.for_session(&ctx.session_user, &self.database))
                    })
                    .unwrap_or_else(search_path::default_path);
                &default_path
            }
        };
        let temp = ctx.temp_schema.clone().flatten();
        let mut schemas = Vec::new();
        for name in &names {
            let resolved =
                search_path::resolve(path, role, name, &|s, n| snapshot.has(s, n), &|n| {
                    temp.as_deref().is_some_and(|t| snapshot.has(t, n))
                });
            match resolved {
                Resolved::Schema(s) => schemas.push(s),
                Resolved::Temp => {
                    return Err(ControllerError::Unsupported(format!(
                        "{name} is a temporary table of this session"
                    )))
                }
                Resolved::Missing => {
                    return Err(ControllerError::NotFound(format!(
                        "relation \"{name}\" does not exist under this session's search_path"
                    )))
                }
            }
        }
        let schema_of = |n: &str| {
            let i = names.iter().position(|u| u == n)?;
            schemas.get(i).cloned()
        };
        let mut query = parse_select(text, Dialect::Postgres)
            .map_err(|e| ControllerError::Invalid(e.to_string()))?;
        if !larder_sql::identity::qualify(&mut query, &schema_of) {
            return Err(ControllerError::Internal(
                "the query's relation names could not be qualified".into(),
            ));
        }
        let qualified_text = query.to_string();
        Ok((qualified_text, normalize_query(query)))
    }

    /// A stored cache's query, ready to build. Caches created before names were qualified at
    /// creation may hold unqualified names: they are read as they always were (`public`
    /// first, else the only replicated schema with such a table), and qualified.
    pub fn stored_query(&self, text: &str) -> Result<(String, Normalized), ControllerError> {
        if self.dialect == Dialect::MySql {
            // Stored qualified: the database is only a default for names that are not.
            let database = self.my_source()?.database().to_string();
            return mysql::mysql_normalized(text, &database);
        }
        let mut query = parse_select(text, Dialect::Postgres)
            .map_err(|e| ControllerError::Invalid(e.to_string()))?;
        let catalog = RegistryCatalog { core: &self.core };
        let schema_of = |n: &str| catalog.table(None, n).map(|t| t.schema);
        if !larder_sql::identity::unqualified_relations(&query).is_empty()
            && !larder_sql::identity::qualify(&mut query, &schema_of)
        {
            return Err(ControllerError::Unsupported(
                "a relation the query names is not replicated".into(),
            ));
        }
        Ok((query.to_string(), normalize_query(query)))
    }

    /// The upstream's current WAL position.
    pub(super) async fn upstream_position(&self) -> Result<u64, ControllerError> {
        let client = self.upstream_client().await?;
        crate::relations::current_wal_position(&client)
            .await
            .map_err(|e| ControllerError::Unavailable(db_error_text(&e)))
    }
}

//! Who may do what with caches: the privileges `CREATE CACHE` needs, the roles that may drop
//! caches, and which query shapes `SHOW PROXIED QUERIES` shows a role.

use super::*;

impl Controller {
    /// What the upstream lets `role` do, for the tables `oids` (asked now: Larder statements
    /// are rare, and must not act on a stale answer).
    pub(super) async fn role_access(
        &self,
        role: &str,
        oids: &[u32],
    ) -> Result<RoleAccess, ControllerError> {
        let client = self.upstream_client().await?;
        self.privileges
            .fetch_now(&client, role, oids)
            .await
            .map_err(|e| {
                ControllerError::Unavailable(format!(
                    "reading the privileges of role {role}: {}",
                    db_error_text(&e)
                ))
            })
    }

    /// Whether `role` may read what a new cache reads (each relation's `columns_read`, or the
    /// whole relation when none are listed), as the upstream would judge the same query;
    /// 42501 naming `what` otherwise.
    pub(super) async fn require_select(
        &self,
        role: &str,
        relations: &[larder_adapter::cache::CachedRelation],
        what: &str,
    ) -> Result<(), ControllerError> {
        if self.dialect == Dialect::MySql {
            // The MySQL session prepared the query upstream as its own user first.
            return Ok(());
        }
        let oids: Vec<u32> = relations.iter().map(|r| r.oid).collect();
        let access = self.role_access(role, &oids).await?;
        for r in relations {
            access
                .may_select(
                    role,
                    &Reads {
                        oid: r.oid,
                        schema: &r.schema,
                        name: &r.name,
                        columns: &r.columns_read,
                    },
                )
                .map_err(|e| ControllerError::Forbidden(format!("{what}: {e}")))?;
        }
        Ok(())
    }

    /// Managing caches for everyone needs a superuser or a member of `--admin-role`.
    pub(super) async fn require_admin(
        &self,
        role: &str,
        what: &str,
    ) -> Result<(), ControllerError> {
        if self.role_access(role, &[]).await?.admin {
            return Ok(());
        }
        Err(ControllerError::Forbidden(match self.privileges.admin_role() {
            Some(admin) => format!(
                "{what} requires a superuser or a member of role {admin} (--admin-role); role {role} is neither"
            ),
            None => format!(
                "{what} requires a superuser (or a member of the role named by --admin-role, which is not set); role {role} is not a superuser"
            ),
        }))
    }

    /// Which relation names (quoted, as written) `role` may read, asked of the upstream.
    pub(super) async fn readable_relations(
        &self,
        role: &str,
        names: Vec<String>,
    ) -> Result<std::collections::HashSet<String>, ControllerError> {
        if names.is_empty() {
            return Ok(Default::default());
        }
        let client = self.upstream_client().await?;
        let rows = client
            .query(
                "SELECT n, COALESCE(pg_catalog.has_any_column_privilege($1, \
                        pg_catalog.to_regclass(n), 'SELECT'), false) \
                 FROM pg_catalog.unnest($2::text[]) AS n",
                &[&role, &names],
            )
            .await
            .map_err(|e| ControllerError::Unavailable(db_error_text(&e)))?;
        Ok(rows
            .into_iter()
            .filter(|r| r.get::<_, bool>(1))
            .map(|r| r.get(0))
            .collect())
    }

    pub(super) async fn show_proxied(
        &self,
        supported_only: bool,
        query_id: Option<&str>,
        limit: Option<u64>,
        role: &str,
    ) -> Result<Table, ControllerError> {
        let shapes = self.proxied.snapshot();
        let mysql = self.dialect == Dialect::MySql;
        // MySQL keeps `$n` placeholders in the text; its parser reads `?`.
        let parse = |text: &str| match mysql {
            true => larder_sql::mysql::with_question_marks(text)
                .ok_or_else(|| {
                    larder_sql::error::SqlError::Parse("placeholders out of order".into())
                })
                .and_then(|t| parse_select(&t, Dialect::MySql)),
            false => parse_select(text, Dialect::Postgres),
        };
        // A plain user sees only the shapes whose every table it can read (on MySQL only
        // admins see them: the session checked).
        let relations_of = |text: &str| -> Option<Vec<String>> {
            let q = parse(text).ok()?;
            let rels = larder_sql::normalize::relations(&q);
            (!rels.is_empty()).then(|| {
                rels.iter()
                    .map(|(s, n)| match s {
                        Some(s) => format!("{}.{}", quote_ident(s), quote_ident(n)),
                        None => quote_ident(n),
                    })
                    .collect()
            })
        };
        let visible = if mysql || self.role_access(role, &[]).await?.admin {
            None
        } else {
            let mut names: Vec<String> = shapes
                .iter()
                .filter_map(|shape| relations_of(&shape.text))
                .flatten()
                .collect();
            names.sort();
            names.dedup();
            Some(self.readable_relations(role, names).await?)
        };
        let mut rows: Vec<(u64, Vec<Option<String>>)> = Vec::new();
        for shape in shapes {
            if query_id.is_some_and(|q| q != shape.query_id) {
                continue;
            }
            if let Some(readable) = &visible {
                let ok = relations_of(&shape.text)
                    .is_some_and(|rels| rels.iter().all(|r| readable.contains(r)));
                if !ok {
                    continue;
                }
            }
            let parsed = parse(&shape.text).map(normalize_query);
            let supported = if self.core.caches.get(&shape.query_id).is_some() {
                "cached".to_string()
            } else {
                match &parsed {
                    Err(_) => "unsupported: only SELECT statements can be cached".to_string(),
                    Ok(n) => match self.check_supported(n) {
                        Ok((mut plan, tables)) if mysql => {
                            match self.check_collations(&mut plan, &tables).await {
                                Ok(()) => "yes".to_string(),
                                Err(ControllerError::Unavailable(r)) => format!("pending: {r}"),
                                Err(e) => format!("unsupported: {e}"),
                            }
                        }
                        Ok(_) => "yes".to_string(),
                        Err(ControllerError::Unavailable(r)) => format!("pending: {r}"),
                        Err(e) => format!("unsupported: {e}"),
                    },
                }
            };
            let shallow = if self.core.shallow.get(&shape.query_id).is_some() {
                "cached".to_string()
            } else {
                match &parsed {
                    Err(_) => "unsupported: only SELECT statements can be cached".to_string(),
                    Ok(n) => match self.shallow_possible(n) {
                        Ok(()) => "yes".to_string(),
                        Err(e) => format!("unsupported: {e}"),
                    },
                }
            };
            // SUPPORTED: what the dataflow supports (any query the upstream runs can be a
            // shallow cache).
            if supported_only && !(supported == "yes" || supported == "cached") {
                continue;
            }
            let saving_us =
                if supported == "yes" || supported.starts_with("pending") || shallow == "yes" {
                    estimated_saving_us(&shape)
                } else {
                    0
                };
            let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
            rows.push((
                saving_us,
                vec![
                    Some(shape.query_id),
                    Some(shape.text),
                    Some(supported),
                    Some(shape.count.to_string()),
                    Some(ms(shape.total_us)),
                    shape.p50_us.map(|u| ms(u64::from(u))),
                    shape.p99_us.map(|u| ms(u64::from(u))),
                    Some(shape.rows.to_string()),
                    Some(ms(saving_us)),
                    Some(shallow),
                ],
            ));
        }
        // Most worth caching first; ties (nothing to save) by id.
        rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1[0].cmp(&b.1[0])));
        let mut t = Table::new(columns::SHOW_PROXIED_QUERIES);
        let limit = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        t.rows
            .extend(rows.into_iter().take(limit).map(|(_, row)| row));
        Ok(t)
    }
}

/// What a hit costs Larder, measured (`benches/compare`, cached c1: about 24 µs of CPU per
/// query); the advisor subtracts it from the upstream time a cache would save.
const HIT_COST_US: u64 = 25;

/// The upstream time a cache would have saved this shape so far: every timed statement's
/// upstream time minus what a hit costs instead.
fn estimated_saving_us(shape: &crate::proxied::ProxiedShape) -> u64 {
    shape
        .total_us
        .saturating_sub(shape.timed.saturating_mul(HIT_COST_US))
}

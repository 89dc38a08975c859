//! Shallow (TTL) caches: `CREATE SHALLOW CACHE`, what decides a plain `CREATE CACHE`
//! (`--cache-mode`), their rows in `SHOW CACHES`, and restoring them at start.
//!
//! A shallow cache needs no replicated table: it keeps what the upstream answered. Creating one
//! checks that the upstream accepts the query, that nothing in it makes a kept answer wrong
//! for other sessions (see [`larder_sql::shallow`], relaxed by `--shallow-allow`), and that
//! the creator may read every relation it names; the router checks each reader's role the
//! same way before a hit.

use larder_adapter::cache::CachedRelation;
use larder_adapter::shallow::{ShallowCache, ShallowPolicy};
use larder_sql::shallow::Refusal;
use larder_sql::statement::TtlPolicy;

use super::*;
use crate::config::{CacheMode, ShallowAllow};

/// The server's settings for shallow caches.
#[derive(Clone, Debug)]
pub struct ShallowSettings {
    pub mode: CacheMode,
    pub allow: Vec<ShallowAllow>,
    /// The policy of a shallow cache created without one.
    pub default_ttl_ms: u64,
}

impl Default for ShallowSettings {
    fn default() -> Self {
        ShallowSettings {
            mode: CacheMode::Deep,
            allow: Vec::new(),
            default_ttl_ms: 10_000,
        }
    }
}

impl ShallowSettings {
    /// `--cache-mode`, `--shallow-allow` and `--shallow-ttl-seconds`.
    pub fn from_config(cfg: &crate::config::Config) -> ShallowSettings {
        ShallowSettings {
            mode: cfg.cache_mode,
            allow: cfg.shallow_allow.clone(),
            default_ttl_ms: cfg.shallow_ttl_seconds * 1000,
        }
    }

    fn allows(&self, a: ShallowAllow) -> bool {
        self.allow.contains(&a)
    }

    /// Why `query` cannot be a shallow cache under these settings, if it cannot.
    pub fn refusal(&self, normalized: &Normalized, dialect: Dialect) -> Option<String> {
        larder_sql::shallow::refusals(&normalized.query, dialect)
            .into_iter()
            .find(|r| match r {
                Refusal::Nondeterministic(_) => !self.allows(ShallowAllow::Nondeterministic),
                Refusal::Catalog(_) => !self.allows(ShallowAllow::Catalogs),
                Refusal::Session(_) => !self.allows(ShallowAllow::Session),
                Refusal::Locking => true,
            })
            .map(|r| r.to_string())
    }

    fn policy(&self, p: Option<TtlPolicy>) -> ShallowPolicy {
        let ttl_ms = p.map_or(self.default_ttl_ms, |p| p.ttl_ms);
        ShallowPolicy::new(
            Duration::from_millis(ttl_ms),
            p.and_then(|p| p.refresh_ms).map(Duration::from_millis),
        )
    }
}

impl Controller {
    /// `CREATE SHALLOW CACHE`, for a query already resolved for the creating session.
    pub(super) async fn create_shallow(
        &self,
        always: bool,
        name: Option<String>,
        (text, normalized): (String, Normalized),
        policy: Option<TtlPolicy>,
        role: &str,
    ) -> Result<Table, ControllerError> {
        if let Some(existing) = self.core.shallow.get(&normalized.query_id) {
            return Ok(shallow_row(&existing));
        }
        if self.core.caches.get(&normalized.query_id).is_some() {
            return Err(ControllerError::Invalid(format!(
                "query {} already has a deep cache; drop it first",
                normalized.query_id
            )));
        }
        if always && !self.shallow.allows(ShallowAllow::Transactions) {
            return Err(ControllerError::Unsupported(
                "a shallow cache answers outside transactions only: inside one a session reads \
                 its own snapshot (allow with --shallow-allow transactions)"
                    .into(),
            ));
        }
        if let Some(reason) = self.shallow.refusal(&normalized, self.dialect) {
            return Err(ControllerError::Unsupported(format!(
                "cannot make a shallow cache: {reason}"
            )));
        }
        let (relations, client) = match self.dialect {
            // The creating session prepared the query upstream as its user before it handed
            // the statement over; the controller's session checks it as it will be stored.
            Dialect::MySql => {
                self.my_source()?
                    .describe(&text)
                    .await
                    .map_err(|e| match e {
                        larder_replication::ReplicationError::Rejected(m) => {
                            ControllerError::Unsupported(format!(
                                "the upstream rejects the query: {m}"
                            ))
                        }
                        other => ControllerError::Unavailable(other.to_string()),
                    })?;
                (Vec::new(), None)
            }
            Dialect::Postgres => {
                let relations = self.shallow_relations(&normalized)?;
                // The creator must be able to read what the query names, and the upstream
                // must accept the query as it will be sent.
                self.require_select(role, &relations, "CREATE SHALLOW CACHE")
                    .await?;
                let client = self.upstream_client().await?;
                client.prepare(&normalized.text).await.map_err(|e| {
                    ControllerError::Unsupported(format!(
                        "the upstream rejects the query: {}",
                        db_error_text(&e)
                    ))
                })?;
                (relations, Some(client))
            }
        };
        let oids: Vec<u32> = relations.iter().map(|r| r.oid).collect();
        let name = name.unwrap_or_else(|| normalized.query_id.clone());
        if self.core.caches.by_name_or_id(&name).is_some()
            || self.core.shallow.by_name_or_id(&name).is_some()
        {
            return Err(ControllerError::Invalid(format!(
                "a cache named {name} already exists"
            )));
        }
        let policy = self.shallow.policy(policy);
        self.core
            .storage
            .put_cache(&StoredCache {
                name: name.clone(),
                query_id: normalized.query_id.clone(),
                query: text.clone(),
                always,
                shallow: Some((
                    policy.ttl.as_millis() as u64,
                    policy.refresh.as_millis() as u64,
                )),
            })
            .map_err(|e| ControllerError::Internal(e.to_string()))?;
        let cache = self.core.shallow.store.cache(
            normalized.query_id.clone(),
            name.clone(),
            text,
            always,
            policy,
            relations,
        );
        // Every role's privileges on its relations, so that no first read goes upstream for
        // want of them.
        if let Some(client) = &client {
            if let Err(e) =
                crate::privileges::learn_everyone(&self.privileges, &self.core, client, &oids).await
            {
                tracing::debug!(error = %e, "learning privileges before publishing a shallow cache");
            }
        }
        self.core.shallow.insert(Arc::clone(&cache));
        info!(cache = %name, query_id = %cache.query_id, ttl_ms = policy.ttl.as_millis() as u64,
            "shallow cache created");
        Ok(shallow_row(&cache))
    }

    /// The relations a (qualified) query names, as Larder's catalog of the upstream knows them.
    fn shallow_relations(
        &self,
        normalized: &Normalized,
    ) -> Result<Vec<CachedRelation>, ControllerError> {
        let mut out: Vec<CachedRelation> = Vec::new();
        for (schema, name) in larder_sql::normalize::relations(&normalized.query) {
            let Some(schema) = schema else {
                // Unqualified after resolution: a CTE or a function in FROM.
                continue;
            };
            let oid = self.relations.oid(&schema, &name).ok_or_else(|| {
                ControllerError::NotFound(format!("relation \"{schema}.{name}\" does not exist"))
            })?;
            if !out.iter().any(|r| r.oid == oid) {
                out.push(CachedRelation {
                    oid,
                    schema,
                    name,
                    columns_read: Vec::new(),
                });
            }
        }
        Ok(out)
    }

    /// Whether `query` can be a shallow cache (for `EXPLAIN CREATE CACHE` and the advisor).
    pub(super) fn shallow_possible(&self, normalized: &Normalized) -> Result<(), String> {
        match self.shallow.refusal(normalized, self.dialect) {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    /// Re-creates a stored shallow cache at start (its entries start empty).
    pub fn restore_shallow(&self, stored: &StoredCache) -> Result<(), ControllerError> {
        let Some((ttl_ms, refresh_ms)) = stored.shallow else {
            return Err(ControllerError::Internal("not a shallow cache".into()));
        };
        let query = parse_select(&stored.query, self.dialect)
            .map_err(|e| ControllerError::Invalid(e.to_string()))?;
        let normalized = normalize_query(query);
        // On MySQL entries are keyed by user and filled by the user's own reads: no relation
        // is checked before a hit.
        let relations = match self.dialect {
            Dialect::MySql => Vec::new(),
            Dialect::Postgres => self.shallow_relations(&normalized)?,
        };
        let cache = self.core.shallow.store.cache(
            stored.query_id.clone(),
            stored.name.clone(),
            stored.query.clone(),
            stored.always,
            ShallowPolicy::new(
                Duration::from_millis(ttl_ms),
                Some(Duration::from_millis(refresh_ms)),
            ),
            relations,
        );
        self.core.shallow.insert(cache);
        Ok(())
    }

    /// `DROP CACHE` of a shallow cache; false when there is none of that name.
    pub(super) fn drop_shallow(&self, name: &str) -> Result<bool, ControllerError> {
        let Some(cache) = self.core.shallow.by_name_or_id(name) else {
            return Ok(false);
        };
        self.core.shallow.remove(&cache.query_id);
        self.core
            .storage
            .delete_cache(&cache.name)
            .map_err(|e| ControllerError::Internal(e.to_string()))?;
        info!(cache = %cache.name, "shallow cache dropped");
        Ok(true)
    }
}

/// A shallow cache's `CREATE CACHE` answer (query id, name, query, type).
pub(super) fn shallow_row(c: &ShallowCache) -> Table {
    let mut t = Table::new(columns::CREATE_CACHE);
    t.push(vec![
        c.query_id.clone(),
        c.name.clone(),
        c.query.clone(),
        "shallow".into(),
    ]);
    t
}

/// A shallow cache's `SHOW CACHES` properties: kind, policy, counters.
pub(super) fn shallow_properties(c: &ShallowCache) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut props = vec![
        "shallow".to_string(),
        format!(
            "ttl {} s, refresh after {} s",
            fmt_secs(c.policy.ttl),
            fmt_secs(c.policy.refresh)
        ),
    ];
    if c.always {
        props.insert(0, "always".into());
    }
    props.push(format!(
        "{} entries, {} misses ({} waited for another session's fetch), {} refreshes",
        c.entries(),
        c.stats.misses.load(Relaxed),
        c.stats.coalesced.load(Relaxed),
        c.stats.refreshes.load(Relaxed)
    ));
    props.join(", ")
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s:.1}")
    }
}

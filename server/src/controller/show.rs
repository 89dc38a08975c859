//! The `SHOW` statements' tables.

use super::*;

impl Controller {
    pub(super) fn show_caches(&self, query_id: Option<&str>) -> Table {
        let mut t = Table::new(columns::SHOW_CACHES);
        for c in self.core.caches.all() {
            if query_id.is_some_and(|id| id != c.query_id) {
                continue;
            }
            let mut props = vec![if c.always { "always" } else { "" }.to_string()];
            props.retain(|p| !p.is_empty());
            let (nodes, state_bytes) = {
                let graph = self.core.dataflow.lock().expect("dataflow lock poisoned");
                (
                    graph.cache_nodes(c.cache_id),
                    graph.cache_state_bytes(c.cache_id),
                )
            };
            let reader_bytes = c.reader.stats().map_or(0, |s| s.bytes);
            if nodes.shared > 0 {
                props.push(format!(
                    "shares {} of its {} operators with other caches",
                    nodes.shared, nodes.total
                ));
            }
            if c.reader.is_partial() {
                let filled = c
                    .filler
                    .as_ref()
                    .map_or(0, |f| f.filled.load(std::sync::atomic::Ordering::Relaxed));
                props.push(format!(
                    "partial: {} keys held, the others filled when read ({filled} filled from storage so far)",
                    c.reader.key_count()
                ));
            }
            if !c.reader.is_ready() {
                props.push("filling: its queries go upstream until it is ready".into());
            }
            if let Some(reason) = c.invalid_reason() {
                props.push(format!("not serving: {reason}"));
            }
            t.push(vec![
                c.query_id.clone(),
                c.name.clone(),
                c.query.clone(),
                props.join(", "),
                c.hits.total().to_string(),
                (reader_bytes + state_bytes).to_string(),
            ]);
        }
        for c in self.core.shallow.all() {
            if query_id.is_some_and(|id| id != c.query_id) {
                continue;
            }
            t.push(vec![
                c.query_id.clone(),
                c.name.clone(),
                c.query.clone(),
                super::shallow::shallow_properties(&c),
                c.stats
                    .hits
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
                c.stats
                    .bytes
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
            ]);
        }
        for (c, reason) in self.unbuilt.lock().expect("unbuilt lock poisoned").iter() {
            if query_id.is_some_and(|id| id != c.query_id) {
                continue;
            }
            let mut props = if c.always {
                vec!["always".to_string()]
            } else {
                vec![]
            };
            props.push(format!("not serving: {reason}"));
            t.push(vec![
                c.query_id.clone(),
                c.name.clone(),
                c.query.clone(),
                props.join(", "),
                "0".into(),
                "0".into(),
            ]);
        }
        t
    }

    pub(super) fn show_status(&self) -> Table {
        let mut t = Table::new(columns::NAME_VALUE);
        let status = &self.core.status;
        let lsn = status.applied_lsn.load(Ordering::SeqCst);
        let repl = status.replication.lock().expect("status lock").clone();
        let snapshot = {
            let tables = self.core.tables.read().expect("tables lock poisoned");
            if tables.all().any(|t| {
                matches!(
                    t.state,
                    TableState::Snapshotting { .. } | TableState::CatchingUp { .. }
                )
            }) {
                "In Progress"
            } else {
                "Completed"
            }
        };
        t.push(vec![
            "Database Connection".into(),
            if repl == "Streaming" {
                "Connected".into()
            } else {
                repl.clone()
            },
        ]);
        t.push(vec!["Upstream".into(), self.upstream_display.clone()]);
        t.push(vec![
            "Connection Count".into(),
            self.connections.load(Ordering::Relaxed).to_string(),
        ]);
        t.push(vec!["Snapshot Status".into(), snapshot.into()]);
        if let Some(source) = &self.source {
            let o = source.options();
            t.push(vec![
                "Snapshot Copy".into(),
                format!(
                    "{} connections, at most {} bytes of rows in memory",
                    o.snapshot_parallelism, o.snapshot_memory_max_bytes
                ),
            ]);
        }
        t.push(vec![
            "Replication Status".into(),
            if repl.is_empty() {
                "Not started".into()
            } else {
                repl
            },
        ]);
        t.push(vec![
            "Caching".into(),
            if status.caching_on.load(Ordering::Relaxed) {
                "on".into()
            } else {
                "off (every query goes upstream)".into()
            },
        ]);
        t.push(vec![
            "Replication Restarts".into(),
            status.restarts.load(Ordering::Relaxed).to_string(),
        ]);
        t.push(vec![
            "Replication Offset".into(),
            match self.dialect {
                // A binlog file's sequence number and the offset in it.
                larder_sql::statement::Dialect::MySql => {
                    format!("binlog file {}, offset {}", lsn >> 32, lsn & 0xffff_ffff)
                }
                larder_sql::statement::Dialect::Postgres => {
                    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
                }
            },
        ]);
        t.push(vec![
            "Caches".into(),
            self.core.caches.all().len().to_string(),
        ]);
        t.push(vec!["Join Indexes".into(), self.join_indexes()]);
        t.push(vec![
            "Last Error".into(),
            status
                .last_error
                .lock()
                .expect("status lock")
                .clone()
                .unwrap_or_default(),
        ]);
        t
    }

    /// The secondary indexes joins read from storage, e.g. `1: public.votes (story_id)`.
    fn join_indexes(&self) -> String {
        let indexes = self.core.storage.indexes();
        let tables = self.core.tables.read().expect("tables lock poisoned");
        let mut names: Vec<String> = indexes
            .iter()
            .map(|(table, columns)| match tables.by_table_id(*table) {
                Some(t) => {
                    let cols: Vec<&str> = columns
                        .iter()
                        .map(|&c| t.schema.columns.get(c).map_or("?", |c| c.name.as_str()))
                        .collect();
                    format!(
                        "{}.{} ({})",
                        t.schema.schema,
                        t.schema.name,
                        cols.join(", ")
                    )
                }
                None => format!("table {table} ({columns:?})"),
            })
            .collect();
        names.sort();
        if names.is_empty() {
            "0".into()
        } else {
            format!("{}: {}", names.len(), names.join("; "))
        }
    }

    pub(super) fn show_tables(&self) -> Table {
        let mut t = Table::new(columns::SHOW_TABLES);
        let tables = self.core.tables.read().expect("tables lock poisoned");
        let now = std::time::Instant::now();
        let mut rows: Vec<_> = tables
            .all()
            .map(|e| {
                let (status, description) = e.state.describe();
                let p = e.state.progress(now);
                let p = p.as_ref();
                vec![
                    format!("\"{}\".\"{}\"", e.schema.schema, e.schema.name),
                    status,
                    description,
                    p.map(|p| p.rows_done.to_string()).unwrap_or_default(),
                    p.and_then(|p| p.rows_estimated)
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                    p.and_then(|p| p.percent)
                        .map(|x| format!("{x:.1}"))
                        .unwrap_or_default(),
                    p.and_then(|p| p.eta)
                        .map(|d| d.as_secs().to_string())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        rows.sort();
        for r in rows {
            t.push(r);
        }
        t
    }
}

pub(super) fn cache_row(c: &CacheEntry) -> Table {
    let mut t = Table::new(columns::CREATE_CACHE);
    t.push(vec![
        c.query_id.clone(),
        c.name.clone(),
        c.query.clone(),
        "deep".into(),
    ]);
    t
}

pub(super) fn show_version() -> Table {
    let mut t = Table::new(columns::NAME_VALUE);
    t.push(vec!["version".into(), env!("CARGO_PKG_VERSION").into()]);
    t.push(vec![
        "commit".into(),
        option_env!("LARDER_GIT_COMMIT").unwrap_or("unknown").into(),
    ]);
    t.push(vec![
        "platform".into(),
        format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
    ]);
    t
}

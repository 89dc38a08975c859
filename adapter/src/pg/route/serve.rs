//! The cache path: whether a cache may answer a statement for this session now (the checks
//! every cache shares, then a deep cache's or a shallow cache's own), reading and encoding a
//! deep cache's hit, and recording what went upstream instead.

use super::*;

impl RouterSession {
    /// The buffer a cache hit's response is encoded into, reused from hit to hit.
    pub(super) fn take_scratch(&mut self) -> BytesMut {
        let mut b = std::mem::take(&mut self.scratch);
        b.clear();
        b
    }

    /// Keeps a hit's buffer for the next hit, unless a large result made it big.
    pub(super) fn put_scratch(&mut self, b: BytesMut) {
        if b.capacity() <= SCRATCH_KEEP_MAX_BYTES {
            self.scratch = b;
        }
    }

    /// Decides whether `shape` can be answered locally: by a deep cache (with the read's
    /// parameter values) or by a shallow one.
    pub(super) fn try_cache(
        &mut self,
        session: &SessionState,
        shape: &Shape,
        bound: Option<(&Bind, &Vec<u32>)>,
        dispatch: &mut Dispatch<'_>,
    ) -> Result<Route, String> {
        if !self.backend.caching_on() {
            // Still learn what the session's names resolve to, so that switching caching
            // back on serves this session at once.
            if self.eligible_db {
                let _ = self.session_query_id(session, shape, dispatch);
            }
            return Err("caching is off (ALTER LARDER SET caching = off, or --caching off)".into());
        }
        if !self.eligible_db {
            return Err(format!(
                "database {} is not the replicated database",
                session.database()
            ));
        }
        self.check_barrier(session)?;
        if dispatch.pending_client_statements() > 0 || dispatch.unsynced() {
            return Err("earlier statements of the session are still in flight".into());
        }
        if session.transaction_status() == TransactionStatus::Failed {
            return Err("the transaction has failed".into());
        }
        let query_id = self.session_query_id(session, shape, dispatch)?;
        let Some(cache) = self.backend.lookup(&query_id) else {
            return match self.backend.shallow(&query_id) {
                Some(shallow) => self.shallow_allowed(session, shallow, query_id, dispatch),
                None => Err(format!("no cache for query {query_id}")),
            };
        };
        if session.transaction_status() == TransactionStatus::InTransaction && !cache.always() {
            return Err("inside a transaction (the cache was not created ALWAYS)".into());
        }
        // The relations the cache reads are the ones their names denote now (not dropped ones).
        for r in cache.relations() {
            if self.backend.relation_oid(&r.schema, &r.name) != Some(r.oid) {
                return Err(format!(
                    "{}.{} is not the relation the cache was built from (dropped or re-created)",
                    r.schema, r.name
                ));
            }
        }
        match self.facts.role() {
            Some(role) => self.backend.may_read(role, cache.as_ref())?,
            None => {
                if self.facts.ask(dispatch) {
                    self.captures.push_back(CaptureKind::Facts);
                }
                return Err("asking the upstream which role this session runs as".into());
            }
        }
        let tz = self.time_zone(session);
        let needs_tz = cache.columns().iter().any(|c| c.ty == SqlType::TimestampTz)
            || cache.param_types().contains(&SqlType::TimestampTz);
        if needs_tz && tz.is_none() {
            return Err("the session TimeZone is not UTC or a fixed offset".into());
        }
        let custom_output = self.custom_output
            || self
                .backend
                .custom_output_for(session.user(), session.database());
        if custom_output
            && cache
                .columns()
                .iter()
                .any(|c| affected_by_output_settings(&c.ty))
        {
            return Err("the session changed extra_float_digits or bytea_output".into());
        }
        let iso_dates = session
            .parameter("DateStyle")
            .is_none_or(|d| d.starts_with("ISO"));
        if !iso_dates && cache.columns().iter().any(|c| is_datetime(&c.ty)) {
            return Err("the session DateStyle is not ISO".into());
        }
        let params = match bound {
            None => {
                if shape.params.iter().any(has_placeholder) {
                    return Err("placeholders in a simple query".into());
                }
                resolve_params(&shape.params, &|_| None, cache.param_types())
                    .map_err(|e| e.to_string())?
            }
            Some((bind, declared)) => {
                let values = decode_bind(bind, declared, &shape.params, cache.param_types())?;
                resolve_params(
                    &shape.params,
                    &|n| values.get(n.wrapping_sub(1)).cloned().flatten(),
                    cache.param_types(),
                )
                .map_err(|e| e.to_string())?
            }
        };
        Ok(Route::Deep((cache, params)))
    }

    /// Whether a shallow cache may answer this session now: outside a transaction (unless it
    /// was created ALWAYS), over the relations it was created on, for a role that may read
    /// them, with output settings Larder can see.
    pub(super) fn shallow_allowed(
        &mut self,
        session: &SessionState,
        cache: Arc<crate::shallow::ShallowCache>,
        query_id: Arc<str>,
        dispatch: &mut Dispatch<'_>,
    ) -> Result<Route, String> {
        if session.transaction_status() != TransactionStatus::Idle && !cache.always {
            return Err("inside a transaction (the shallow cache was not created ALWAYS)".into());
        }
        for r in &cache.relations {
            if self.backend.relation_oid(&r.schema, &r.name) != Some(r.oid) {
                return Err(format!(
                    "{}.{} is not the relation the cache was built from (dropped or re-created)",
                    r.schema, r.name
                ));
            }
        }
        match self.facts.role() {
            Some(role) => self.backend.may_read_shallow(role, &cache)?,
            None => {
                if self.facts.ask(dispatch) {
                    self.captures.push_back(CaptureKind::Facts);
                }
                return Err("asking the upstream which role this session runs as".into());
            }
        }
        let custom_output = self.custom_output
            || self
                .backend
                .custom_output_for(session.user(), session.database());
        if custom_output {
            return Err("the session changed extra_float_digits or bytea_output".into());
        }
        Ok(Route::Shallow(cache, query_id))
    }

    /// The session's `TimeZone` as Larder can apply it (parsed once per value).
    pub(super) fn time_zone(&mut self, session: &SessionState) -> Option<TimeZoneSetting> {
        let name = session.parameter("TimeZone")?;
        if let Some((known, tz)) = &self.tz_memo {
            if known == name {
                return *tz;
            }
        }
        let tz = TimeZoneSetting::from_name(name);
        self.tz_memo = Some((name.to_string(), tz));
        tz
    }

    /// Appends the RowDescription of `cache` for these result formats (encoded once per
    /// cache and formats, then copied).
    pub(super) fn put_row_description(
        &mut self,
        cache: &Arc<dyn CachedQuery>,
        formats: &[i16],
        out: &mut BytesMut,
    ) {
        if let Some((c, f, bytes)) = &self.row_desc_memo {
            if std::ptr::addr_eq(Arc::as_ptr(c), Arc::as_ptr(cache)) && f.as_slice() == formats {
                out.put_slice(bytes);
                return;
            }
        }
        let mut b = BytesMut::new();
        row_description(cache.columns(), &Formats::new(formats)).encode(&mut b);
        out.put_slice(&b);
        self.row_desc_memo = Some((Arc::clone(cache), formats.to_vec(), b.freeze()));
    }

    /// Reads the cache and encodes its rows (DataRows) straight into `out`: no row is copied.
    /// Returns the number of rows.
    pub(super) fn read_hit(
        &self,
        session: &SessionState,
        cache: &dyn CachedQuery,
        params: &[Vec<Value>],
        formats: &Formats,
        out: &mut BytesMut,
    ) -> Result<usize, String> {
        let tz = self
            .tz_memo
            .as_ref()
            .filter(|(name, _)| session.parameter("TimeZone") == Some(name.as_str()))
            .and_then(|(_, tz)| *tz)
            .or_else(|| {
                session
                    .parameter("TimeZone")
                    .and_then(TimeZoneSetting::from_name)
            })
            .unwrap_or(TimeZoneSetting::Utc);
        let mut encoder = RowEncoder {
            columns: cache.columns(),
            formats,
            tz,
            text: String::new(),
            bin: Vec::new(),
            out,
        };
        let rows = cache
            .read_into(params, &mut |row, output| encoder.data_row(row, output))
            .map_err(|m| m.reason)?;
        usize::try_from(rows).map_err(|_| "too many rows".to_string())
    }

    pub(super) fn hit(&mut self, cache: &Arc<dyn CachedQuery>) {
        // No formatting per hit: the reason is written out by EXPLAIN LAST STATEMENT.
        self.last = Last {
            destination: "cache",
            reason: Reason::Hit(Arc::clone(cache)),
        };
    }

    pub(super) fn miss(&mut self, session: &SessionState, shape: &Shape, reason: String) {
        let id = self.miss_recorded(session, shape);
        self.backend.fell_back(&id, &reason);
        self.last = Last {
            destination: "upstream",
            reason: reason.into(),
        };
    }

    /// Records a SELECT that goes upstream (for the advisor); returns its id as this session
    /// means it, when Larder can tell: what `CREATE CACHE FROM <id>` gives the cache.
    pub(super) fn miss_recorded(&mut self, session: &SessionState, shape: &Shape) -> Arc<str> {
        let id = self
            .resolve_id(shape)
            .unwrap_or_else(|_| shape.query_id.clone());
        let facts = &self.facts;
        self.upstream_timing = self
            .backend
            .record_proxied(&id, &shape.text, &|| facts.context(session.user()));
        id
    }

    /// Hands the timing asked for by the latest miss to the statement just forwarded.
    pub(super) fn time_forwarded(&mut self, dispatch: &mut Dispatch<'_>) {
        if let Some(timing) = self.upstream_timing.take() {
            dispatch.time_last_relay(timing);
        }
    }
}

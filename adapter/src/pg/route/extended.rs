//! The extended query protocol: recognizing a `[Parse] Bind [Describe] Execute Sync` unit a
//! cache can answer, answering it, and otherwise forwarding it while keeping track of the
//! client's prepared statements (and re-creating upstream those first answered locally).

use super::*;

pub(super) struct LocalUnit {
    pub(super) parse: Option<Parse>,
    pub(super) statement: String,
    pub(super) bind: Option<Bind>,
    pub(super) describe: bool,
    pub(super) describe_statement: bool,
}

/// Bytes charged in the statement memo for a statement, beyond its name.
pub(super) fn statement_bytes(sql: &str, param_types: &[u32], kind: &Kind) -> usize {
    std::mem::size_of::<Statement>()
        + sql.len()
        + param_types.len() * 4
        + kind_bytes(kind, sql.len())
}

impl RouterSession {
    /// `msgs` ends with Sync.
    pub(super) fn on_unit(
        &mut self,
        session: &SessionState,
        msgs: &[RawFrame<'_>],
        dispatch: &mut Dispatch<'_>,
    ) {
        if let Some(local) = self.unit_shape(msgs) {
            if self.answer_unit(session, &local, msgs, dispatch) {
                return;
            }
        }
        let executed = self.forward_unit(msgs, dispatch);
        self.time_forwarded(dispatch);
        if let Some(tee) = self.pending_tee.take() {
            dispatch.tee_last_relay(shallow::ENTRY_MAX_BYTES, tee);
        }
        if let Some(sql) = executed {
            self.barrier_after(session, &sql, dispatch);
        }
    }

    /// Recognizes `[Parse] Bind [Describe P] Execute Sync` on the unnamed portal, and
    /// `[Parse] Describe S Sync` (for Larder statements).
    pub(super) fn unit_shape(&mut self, msgs: &[RawFrame<'_>]) -> Option<LocalUnit> {
        let mut it = msgs.iter().peekable();
        let mut parse = None;
        if it.peek()?.frame.tag == frontend_tag::PARSE {
            parse = Some(Parse::decode(&it.next()?.frame).ok()?);
        }
        let next = it.next()?;
        if next.frame.tag == frontend_tag::SYNC {
            // `Parse Sync`: a prepare (libpq's PQprepare); answered locally only for Larder's
            // own statements, which the upstream would not understand.
            let p = parse.filter(|_| it.next().is_none())?;
            return Some(LocalUnit {
                statement: p.name.clone(),
                parse: Some(p),
                bind: None,
                describe: false,
                describe_statement: false,
            });
        }
        if next.frame.tag == frontend_tag::DESCRIBE {
            let d = Describe::decode(&next.frame).ok()?;
            if d.target != Target::Statement
                || it.next()?.frame.tag != frontend_tag::SYNC
                || it.next().is_some()
            {
                return None;
            }
            return Some(LocalUnit {
                parse,
                statement: d.name,
                bind: None,
                describe: true,
                describe_statement: true,
            });
        }
        if next.frame.tag != frontend_tag::BIND {
            return None;
        }
        let name = bind_statement_name(next.frame.body)?;
        // Only decode the Bind when the statement could be answered locally.
        let kind = match &parse {
            Some(p) if p.name == name => self.kind_of(&p.query),
            Some(_) => return None,
            None => self.statements.get(name)?.kind.clone(),
        };
        if matches!(*kind, Kind::Other) {
            return None;
        }
        let bind = Bind::decode(&next.frame).ok()?;
        if !bind.portal.is_empty() {
            return None;
        }
        let mut describe = false;
        let mut m = it.next()?;
        if m.frame.tag == frontend_tag::DESCRIBE {
            let d = Describe::decode(&m.frame).ok()?;
            if d.target != Target::Portal || !d.name.is_empty() {
                return None;
            }
            describe = true;
            m = it.next()?;
        }
        if m.frame.tag != frontend_tag::EXECUTE {
            return None;
        }
        let e = Execute::decode(&m.frame).ok()?;
        if !e.portal.is_empty() || e.max_rows != 0 {
            return None;
        }
        if it.next()?.frame.tag != frontend_tag::SYNC || it.next().is_some() {
            return None;
        }
        Some(LocalUnit {
            parse,
            statement: name.to_string(),
            bind: Some(bind),
            describe,
            describe_statement: false,
        })
    }

    /// Answers a recognized unit locally if possible; false means "forward it".
    pub(super) fn answer_unit(
        &mut self,
        session: &SessionState,
        unit: &LocalUnit,
        msgs: &[RawFrame<'_>],
        dispatch: &mut Dispatch<'_>,
    ) -> bool {
        if let Some(p) = &unit.parse {
            // A statement answered locally must be remembered (the upstream does not have it):
            // when that is not possible, the unit goes upstream instead.
            if !self.can_remember_locally(p) {
                return false;
            }
        }
        // `prepared_epoch`: for a statement prepared in an earlier unit, the shape epoch then.
        let (kind, param_types, prepared_epoch) =
            match (&unit.parse, self.statements.get(&unit.statement)) {
                (Some(p), _) => (self.kind_of(&p.query), p.param_types.clone(), None),
                (None, Some(s)) => (s.kind.clone(), s.param_types.clone(), Some(s.epoch)),
                (None, None) => return false,
            };
        let mut out = self.take_scratch();
        if unit.parse.is_some() {
            ParseComplete.encode(&mut out);
        }
        match &*kind {
            Kind::Larder(stmt) => {
                if unit.bind.is_none() && !unit.describe_statement {
                    ReadyForQuery {
                        status: session.transaction_status(),
                    }
                    .encode(&mut out);
                    dispatch.respond(out.freeze());
                    if let Some(p) = &unit.parse {
                        self.remember(p, false);
                    }
                    return true;
                }
                if unit.describe_statement {
                    ParameterDescription { types: vec![] }.encode(&mut out);
                    encode_larder_row_description(stmt, &mut out);
                    ReadyForQuery {
                        status: session.transaction_status(),
                    }
                    .encode(&mut out);
                    dispatch.respond(out.freeze());
                } else {
                    BindComplete.encode(&mut out);
                    let stmt = stmt.clone();
                    self.run_larder(session, stmt, Some((out, unit.describe)), dispatch);
                }
            }
            Kind::Select(shape) => {
                let Some(bind) = &unit.bind else { return false };
                let route = self.try_cache(session, shape, Some((bind, &param_types)), dispatch);
                let route = match route {
                    Ok(Route::Shallow(cache, query_id)) => {
                        let sql = match (&unit.parse, self.statements.get(&unit.statement)) {
                            (Some(p), _) => p.query.clone(),
                            (None, Some(s)) => s.sql.clone(),
                            (None, None) => return false,
                        };
                        let on_upstream = unit.parse.is_some()
                            || self
                                .statements
                                .get(&unit.statement)
                                .is_some_and(|s| s.on_upstream);
                        // Forwarded later unchanged only if that re-creates nothing upstream
                        // that Larder would prepare again (a named Parse).
                        let may_wait = self.batch_tail
                            && on_upstream
                            && unit.parse.as_ref().is_none_or(|p| p.name.is_empty());
                        BindComplete.encode(&mut out);
                        let request = shallow::ShallowRequest {
                            unit: shallow::ShallowUnit::Extended {
                                msgs,
                                sql: &sql,
                                param_types: &param_types,
                                bind,
                            },
                            prefix: out,
                            needs_head: unit.describe,
                            may_wait,
                        };
                        match self.serve_shallow(session, &cache, &query_id, request, dispatch) {
                            shallow::ShallowAction::Answered => {
                                if let Some(p) = &unit.parse {
                                    self.remember(p, false);
                                }
                                return true;
                            }
                            shallow::ShallowAction::Forward(tee) => {
                                self.miss_recorded(session, shape);
                                self.pending_tee = tee;
                                return false;
                            }
                        }
                    }
                    Ok(Route::Deep(read)) => described_alike(prepared_epoch, read),
                    Err(e) => Err(e),
                };
                match route {
                    Ok((cache, params)) => {
                        let formats = Formats::new(&bind.result_formats);
                        BindComplete.encode(&mut out);
                        if unit.describe {
                            self.put_row_description(&cache, &bind.result_formats, &mut out);
                        }
                        let rows = match self.read_hit(
                            session,
                            cache.as_ref(),
                            &params,
                            &formats,
                            &mut out,
                        ) {
                            Ok(rows) => rows,
                            Err(reason) => {
                                self.miss(session, shape, reason);
                                return false;
                            }
                        };
                        finish(&mut out, rows, session.transaction_status());
                        self.hit(&cache);
                        dispatch.respond_copy(&out);
                        self.put_scratch(out);
                    }
                    Err(reason) => {
                        self.miss(session, shape, reason);
                        return false;
                    }
                }
            }
            Kind::Other => return false,
        }
        if let Some(p) = &unit.parse {
            // Answered locally: the upstream does not have this statement (yet).
            self.remember(p, false);
        }
        true
    }

    /// Forwards messages unchanged, keeping track of statements; re-creates upstream any
    /// statement the client prepared while being answered locally.
    /// Returns the text of a statement the unit executes that may change a table's shape or
    /// end a transaction (for the DDL barrier).
    pub(super) fn forward_unit(
        &mut self,
        msgs: &[RawFrame<'_>],
        dispatch: &mut Dispatch<'_>,
    ) -> Option<String> {
        let mut executed = None;
        for m in msgs {
            match m.frame.tag {
                frontend_tag::PARSE => {
                    if let Ok(p) = Parse::decode(&m.frame) {
                        self.watch_forwarded(&p.query, true);
                        self.remember(&p, true);
                    }
                }
                frontend_tag::BIND => {
                    if let Some(name) = bind_statement_name(m.frame.body) {
                        self.ensure_upstream(name, dispatch);
                        // SELECTs (the common case) are not DDL: skip classifying their text.
                        if let Some(stmt) = self.statements.get(name) {
                            if matches!(*stmt.kind, Kind::Other) {
                                let kind = classify(&stmt.sql);
                                // Executing it again may change the role or search_path again.
                                self.facts.watch(kind, &stmt.sql, false, true);
                                if matches!(
                                    kind,
                                    StatementKind::Other
                                        | StatementKind::Write
                                        | StatementKind::Set
                                        | StatementKind::Transaction(_)
                                ) {
                                    executed = Some(stmt.sql.clone());
                                }
                            }
                        } else if self.statements.evicted() > 0 || self.statements_skipped {
                            executed = Some(FORGOTTEN_STATEMENT_SQL.to_string());
                        }
                    }
                }
                frontend_tag::DESCRIBE => {
                    if let Ok(Describe {
                        target: Target::Statement,
                        name,
                    }) = Describe::decode(&m.frame)
                    {
                        self.ensure_upstream(&name, dispatch);
                    }
                }
                frontend_tag::CLOSE => {
                    if let Ok(Close {
                        target: Target::Statement,
                        name,
                    }) = Close::decode(&m.frame)
                    {
                        self.statements.remove(&name);
                    }
                }
                _ => {}
            }
        }
        for m in msgs {
            dispatch.forward(m);
        }
        executed
    }

    /// Whether `p` can be remembered as a statement only Larder knows (see
    /// [`STATEMENTS_MAX_BYTES`]).
    pub(super) fn can_remember_locally(&mut self, p: &Parse) -> bool {
        if p.query.len() > MEMO_TEXT_MAX_BYTES {
            return false;
        }
        let kind = self.kind_of(&p.query);
        self.statements
            .fits_pinned(&p.name, statement_bytes(&p.query, &p.param_types, &kind))
    }

    /// Remembers a prepared statement. Statements only Larder knows (`!on_upstream`) are
    /// pinned; callers check [`RouterSession::can_remember_locally`] first. An upstream-held
    /// statement that does not fit is just not remembered (any older one of that name is
    /// forgotten either way).
    pub(super) fn remember(&mut self, p: &Parse, on_upstream: bool) {
        let kind = self.kind_of(&p.query);
        let size = statement_bytes(&p.query, &p.param_types, &kind);
        self.statement_tokens += 1;
        let stmt = Statement {
            sql: p.query.clone(),
            param_types: p.param_types.clone(),
            on_upstream,
            kind,
            token: self.statement_tokens,
            epoch: self.backend.shape_epoch(),
        };
        let stored = p.query.len() <= MEMO_TEXT_MAX_BYTES
            && self
                .statements
                .insert(&p.name, stmt, size, !on_upstream)
                .is_ok();
        if !stored {
            self.statements.remove(&p.name);
            self.statements_skipped = true;
            debug_assert!(on_upstream, "a local-only statement was not remembered");
        }
    }

    /// Prepares upstream a statement the client prepared while it was answered locally, just
    /// before the client's message that uses it. The Parse joins the client's own segment (no
    /// Sync of Larder's), so a pipeline or implicit transaction is never cut short.
    pub(super) fn ensure_upstream(&mut self, name: &str, dispatch: &mut Dispatch<'_>) {
        let Some(stmt) = self.statements.get_mut(name) else {
            return;
        };
        if stmt.on_upstream {
            return;
        }
        let mut buf = BytesMut::new();
        Parse {
            name: name.to_string(),
            query: stmt.sql.clone(),
            param_types: stmt.param_types.clone(),
        }
        .encode(&mut buf);
        dispatch.inject_parse(&buf, name, stmt.token);
        stmt.on_upstream = true;
        self.statements.set_pinned(name, false);
    }

    /// An injected Parse did not complete (it failed, or an earlier error in its segment made
    /// the upstream skip it): the statement is local-only again, unless the name has been
    /// prepared anew since.
    pub(super) fn parse_lost(&mut self, name: &str, token: u64) {
        let Some(stmt) = self.statements.get(name) else {
            return;
        };
        if stmt.token != token || !stmt.on_upstream {
            return;
        }
        let bytes = statement_bytes(&stmt.sql, &stmt.param_types, &stmt.kind);
        if self.statements.fits_pinned(name, bytes) {
            if let Some(stmt) = self.statements.get_mut(name) {
                stmt.on_upstream = false;
            }
            self.statements.set_pinned(name, true);
        } else {
            // It cannot be kept local within the budget: forget it, like any statement the
            // memo could not hold.
            self.statements.remove(name);
            self.statements_skipped = true;
        }
    }
}

/// A statement prepared earlier (at shape epoch `prepared_epoch`) was described to the client
/// then: a cache built after a table shape change that followed may describe its result
/// otherwise (Postgres itself then refuses with "cached plan must not change result type"), so
/// it does not answer.
fn described_alike(prepared_epoch: Option<u64>, read: CacheRead) -> Result<CacheRead, String> {
    match prepared_epoch {
        Some(epoch) if read.0.built_epoch() > epoch => Err(
            "a table it reads changed shape after the statement was prepared (prepare it again to use the cache)"
                .into(),
        ),
        _ => Ok(read),
    }
}

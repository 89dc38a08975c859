//! What the relay does with the messages it cuts from its buffers: client messages are
//! validated and handed to the interceptor (after load shedding), upstream messages are relayed
//! in runs, with the few the proxy must see or change on the way (ReadyForQuery, ParameterStatus,
//! BackendKeyData, ParseComplete of Larder's own Parse, SASL mechanisms).

use super::*;

impl Relay {
    /// Cuts complete client messages from `cbuf`, validates them and hands them to the
    /// interceptor (or, before authentication, forwards them directly).
    pub(super) fn process_client(&mut self) -> Result<(), CloseReason> {
        let (max, limit) = self.client_message_limit();
        let mut it = FrameIter::new(&self.cbuf, max);
        for item in it.by_ref() {
            let msg = item.map_err(|e| match e {
                ProtocolError::TooLarge { len, max } => {
                    warn!(peer = %self.state.peer(), len, max, limit,
                        "client message too large; closing the session");
                    CloseReason::MessageTooLarge { len, max, limit }
                }
                e => CloseReason::ClientProtocol(e),
            })?;
            if !frontend_tag::is_known(msg.frame.tag) {
                return Err(CloseReason::ClientProtocol(ProtocolError::UnexpectedTag(
                    msg.frame.tag as char,
                )));
            }
        }
        let complete = it.consumed();
        if complete == 0 {
            return Ok(());
        }
        let shed = if self.state.authenticated {
            self.shed_leading(complete)
        } else {
            0
        };
        let batch = ClientBatch {
            raw: &self.cbuf[shed..complete],
        };
        let mut dispatch = Dispatch {
            pipe: &mut self.pipe,
        };
        if self.state.authenticated {
            self.interceptor
                .on_client_messages(&self.state, &batch, &mut dispatch)
                .map_err(|e| CloseReason::Interceptor(e.to_string()))?;
        } else {
            // Authentication messages carry secrets: never shown to the interceptor.
            if self.upstream_tls && self.state.client_tls {
                warn_on_channel_binding_downgrade(&batch, self.state.peer());
            }
            dispatch.forward_all(&batch);
        }
        self.cbuf.advance(complete);
        Ok(())
    }

    /// Load shedding: while the upstream has `upstream_queries_max` client statements in flight
    /// (across all sessions), a new statement from a session at rest (nothing in flight, not
    /// in a transaction) is refused with SQLSTATE 53400 instead of queueing on the database.
    /// A refused extended-protocol unit is skipped up to its Sync, as Postgres does after an
    /// error. Returns the bytes of `cbuf[..complete]` consumed.
    pub(super) fn shed_leading(&mut self, complete: usize) -> usize {
        let Some(gauge) = self.pipe.inflight.as_ref().map(|s| s.gauge()) else {
            return 0;
        };
        let (full, current, max) = (gauge.full(), gauge.current(), gauge.max);
        let mut pos = 0;
        while pos < complete {
            let Ok(Some(h)) = peek_frame(&self.cbuf[pos..complete], usize::MAX) else {
                break;
            };
            let tag = self.cbuf[pos];
            if self.shedding {
                if tag == frontend_tag::SYNC {
                    self.shedding = false;
                    let mut out = BytesMut::new();
                    ReadyForQuery {
                        status: self.state.transaction_status,
                    }
                    .encode(&mut out);
                    Dispatch {
                        pipe: &mut self.pipe,
                    }
                    .respond(out.freeze());
                } else if tag == frontend_tag::TERMINATE {
                    self.shedding = false;
                    break;
                }
                pos += h.total_len;
                continue;
            }
            let starts_unit = matches!(
                tag,
                frontend_tag::QUERY
                    | frontend_tag::FUNCTION_CALL
                    | frontend_tag::PARSE
                    | frontend_tag::BIND
                    | frontend_tag::DESCRIBE
                    | frontend_tag::EXECUTE
                    | frontend_tag::CLOSE
            );
            if !starts_unit
                || !full
                || !self.pipe.at_boundary()
                || !self.pipe.slots.is_empty()
                || self.state.transaction_status != crate::pg::messages::TransactionStatus::Idle
            {
                break;
            }
            warn!(peer = %self.state.peer(), in_flight = current, max,
                "too many statements in flight upstream: a statement is refused");
            self.shared.cfg.metrics.shed.inc();
            let mut out = BytesMut::new();
            ErrorResponse::error(
                "53400",
                format!(
                    "Larder: too many statements in flight to the database ({} at most, \
                     upstream_queries_max); try again",
                    max
                ),
            )
            .encode(&mut out);
            if matches!(tag, frontend_tag::QUERY | frontend_tag::FUNCTION_CALL) {
                ReadyForQuery {
                    status: self.state.transaction_status,
                }
                .encode(&mut out);
            } else {
                self.shedding = true;
            }
            Dispatch {
                pipe: &mut self.pipe,
            }
            .respond(out.freeze());
            pos += h.total_len;
        }
        pos
    }

    /// Cuts complete upstream messages from `ubuf`, tracks session state and relays them.
    pub(super) fn process_upstream(&mut self) -> Result<(), ProtocolError> {
        let mut ubuf = std::mem::take(&mut self.ubuf);
        let result = self.relay_upstream(&ubuf);
        if let Ok(consumed) = result {
            ubuf.advance(consumed);
        }
        self.ubuf = ubuf;
        result.map(|_| ())
    }

    /// Relays the complete messages at the start of `buf`; returns the bytes consumed.
    ///
    /// Messages are copied to the client output in runs; a run is cut only where a message is
    /// replaced (BackendKeyData, SASL mechanisms), dropped (discarded responses) or followed by
    /// queued local responses.
    pub(super) fn relay_upstream(&mut self, buf: &[u8]) -> Result<usize, ProtocolError> {
        let mut pos = 0;
        let mut run_start = 0;
        while let Some(h) = peek_frame(&buf[pos..], UPSTREAM_MESSAGE_SIZE_MAX_BYTES)? {
            if self.waiting_for_local_answer() {
                // Everything the upstream sends now answers later requests: hold it until the
                // local answer in front of them is out.
                break;
            }
            let end = pos + h.total_len;
            let body = &buf[pos + 5..end];
            let front = match self.pipe.slots.front() {
                Some(Slot::Discard) if self.state.authenticated => Some(ResponseMode::Discard),
                Some(Slot::Capture) if self.state.authenticated => Some(ResponseMode::Capture),
                _ => None,
            };
            let mut relay = front.is_none();
            let mut replacement: Option<BytesMut> = None;
            if relay
                && self.state.authenticated
                && !matches!(
                    h.tag,
                    backend_tag::READY_FOR_QUERY
                        | backend_tag::PARAMETER_STATUS
                        | backend_tag::NOTIFICATION_RESPONSE
                )
            {
                if let Some(tee) = self.pipe.front_tee() {
                    tee.push(&buf[pos..end]);
                }
            }
            match h.tag {
                backend_tag::READY_FOR_QUERY => {
                    self.state.transaction_status = ReadyForQuery::decode_body(body)?.status;
                    let upto = if relay { end } else { pos };
                    self.pipe
                        .client_out
                        .extend_from_slice(&buf[run_start..upto]);
                    run_start = end;
                    if front == Some(ResponseMode::Capture) {
                        self.capture(&buf[pos..end]);
                    }
                    self.on_ready_for_query();
                    pos = end;
                    continue;
                }
                backend_tag::PARAMETER_STATUS => {
                    self.track_parameter(body);
                    relay = true;
                }
                backend_tag::NOTIFICATION_RESPONSE => relay = true,
                backend_tag::DATA_ROW => self.pipe.rows_in_front += 1,
                // Counted in every segment; dropped when it answers a Parse of Larder's.
                backend_tag::PARSE_COMPLETE
                    if self.state.authenticated && self.pipe.on_parse_complete() =>
                {
                    relay = false;
                }
                backend_tag::BACKEND_KEY_DATA if !self.state.authenticated => {
                    replacement = Some(self.issue_cancel_key(body)?);
                }
                backend_tag::AUTHENTICATION if !self.state.authenticated => {
                    replacement = strip_channel_binding(body)?;
                }
                _ => {}
            }
            if !relay || replacement.is_some() {
                self.pipe.client_out.extend_from_slice(&buf[run_start..pos]);
                if let Some(r) = replacement {
                    self.pipe.client_out.extend_from_slice(&r);
                }
                if !relay && front == Some(ResponseMode::Capture) {
                    self.capture(&buf[pos..end]);
                }
                run_start = end;
            }
            pos = end;
        }
        self.pipe.client_out.extend_from_slice(&buf[run_start..pos]);
        Ok(pos)
    }

    /// True while an asynchronously computed local answer is the next thing the client gets.
    pub(super) fn waiting_for_local_answer(&self) -> bool {
        self.state.authenticated && matches!(self.pipe.slots.front(), Some(Slot::Later(_)))
    }

    /// Collects a captured response message (bounded).
    pub(super) fn capture(&mut self, msg: &[u8]) {
        if self.pipe.captured.len() + msg.len() <= CAPTURE_SIZE_MAX_BYTES {
            self.pipe.captured.extend_from_slice(msg);
        }
    }

    /// Completes the response unit at the front: startup, or the oldest sync point.
    pub(super) fn on_ready_for_query(&mut self) {
        if !self.state.authenticated {
            self.state.authenticated = true;
            debug!(peer = %self.state.peer(), user = %self.state.user(),
                database = %self.state.database(),
                server_version = self.state.parameter("server_version").unwrap_or(""),
                "session authenticated");
            return;
        }
        for lost in self.pipe.end_segment() {
            self.interceptor
                .on_parse_lost(&self.state, &lost.statement, lost.token);
        }
        match self.pipe.pop_answered() {
            Some(Slot::Capture) => {
                let captured = std::mem::take(&mut self.pipe.captured);
                self.interceptor.on_captured(&self.state, &captured);
                self.pipe.captured = captured;
                self.pipe.captured.clear();
            }
            Some(Slot::Relay | Slot::Discard) => {}
            Some(slot) => {
                // Local answers are never left at the front (they are drained at once).
                debug_assert!(false, "ReadyForQuery with {slot:?} at the front");
                self.pipe.slots.push_front(slot);
            }
            None => debug!(peer = %self.state.peer(), "ReadyForQuery without a pending request"),
        }
        self.pipe.drain_local_front();
        // Larder's own captures wait for this: nothing of the client's in flight upstream.
        self.pipe.release_deferred();
    }

    /// Records a ParameterStatus value (TimeZone, DateStyle, client_encoding, ...).
    pub(super) fn track_parameter(&mut self, body: &[u8]) {
        let mut parts = body.split(|b| *b == 0);
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            return;
        };
        let name = String::from_utf8_lossy(name);
        let value = String::from_utf8_lossy(value);
        if self.state.parameters.get(name.as_ref()).map(String::as_str) != Some(value.as_ref()) {
            self.state
                .parameters
                .insert(name.into_owned(), value.into_owned());
        }
    }

    /// Replaces the upstream's BackendKeyData with a Larder-issued key mapped to it.
    pub(super) fn issue_cancel_key(&mut self, body: &[u8]) -> Result<BytesMut, ProtocolError> {
        let upstream_key = BackendKeyData::decode_body(body)?;
        let target = CancelTarget {
            addr: self.upstream_addr.clone(),
            tls: self.upstream_tls,
            upstream_pid: upstream_key.process_id,
            upstream_secret: upstream_key.secret_key,
        };
        let mut out = BytesMut::new();
        match self.shared.cancels.register(target) {
            Ok((key, guard)) => {
                key.encode(&mut out);
                self.cancel_key = Some(guard);
            }
            // Without a key the client simply cannot cancel; the session still works.
            Err(e) => warn!(error = %e, "could not issue a cancel key"),
        }
        Ok(out)
    }
}

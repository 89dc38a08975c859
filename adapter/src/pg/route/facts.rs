//! What the router knows about a session's state that changes how a query is answered:
//! output settings, the current role, statements that may change them, and Larder's own
//! captured questions to the upstream.

use larder_sql::search_path::{self, PathChange, PathEntry};

use super::*;

/// Startup parameters that change how floats or bytea print (pgjdbc sends
/// `extra_float_digits=3`, which prints like the default).
pub(super) fn custom_output_at_startup(params: &[(String, String)]) -> bool {
    params.iter().any(|(k, v)| match k.as_str() {
        "extra_float_digits" => v.trim().parse::<i32>().map_or(true, |n| n < 1),
        "bytea_output" => !v.eq_ignore_ascii_case("hex"),
        "options" => v.contains("extra_float_digits") || v.contains("bytea_output"),
        _ => false,
    })
}

pub(super) fn affected_by_output_settings(ty: &SqlType) -> bool {
    match ty {
        SqlType::Float4 | SqlType::Float8 | SqlType::Bytea => true,
        SqlType::Array(inner) => affected_by_output_settings(inner),
        _ => false,
    }
}

/// Whether running `sql` may change the session's `current_user`: `SET [LOCAL] ROLE`,
/// `SET SESSION AUTHORIZATION`, `RESET`/`DISCARD ALL`, `set_config`, procedural code, or a call
/// of a function that is not a known builtin (`may_change_settings`).
pub(super) fn may_change_role(kind: StatementKind, sql: &str, may_change_settings: bool) -> bool {
    if may_change_settings {
        return true;
    }
    let mentions = |w: &str| contains_ignore_ascii_case(sql, w);
    match kind {
        StatementKind::Set => mentions("role") || mentions("authoriz") || mentions("all"),
        StatementKind::Other => {
            let head = sql.trim_start();
            let starts = |w: &str| head.len() >= w.len() && head[..w.len()].eq_ignore_ascii_case(w);
            mentions("role")
                || mentions("authoriz")
                || mentions("discard")
                || mentions("set_config")
                || starts("do")
                || starts("call")
        }
        _ => false,
    }
}

/// Case-insensitive substring search without allocating (`needle` is lower-case ASCII).
pub(super) fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// `X/Y` (hex) as Postgres prints an LSN.
pub(super) fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Whether a simple-query string holds more than one statement (text after a `;`). Quotes
/// are not parsed: a `;` inside a literal only makes this conservative.
pub(super) fn is_multi_statement(sql: &str) -> bool {
    match sql.find(';') {
        Some(i) => !sql[i + 1..]
            .trim_matches(|c: char| c.is_whitespace() || c == ';')
            .is_empty(),
        None => false,
    }
}

pub(super) fn is_datetime(ty: &SqlType) -> bool {
    match ty {
        SqlType::Date | SqlType::Time | SqlType::Timestamp | SqlType::TimestampTz => true,
        SqlType::Array(inner) => is_datetime(inner),
        _ => false,
    }
}

/// Name of the statement and portal Larder's own captured queries use.
pub(super) const CAPTURE_NAME: &str = "__larder_capture";

/// Sends `sql` as a captured extended-protocol unit with text parameters, on a statement and
/// portal of Larder's own that are closed in the same unit: values are never spliced into SQL
/// text, and the client's unnamed statement and portal are left alone (a simple `Query` would
/// destroy the unnamed statement).
pub(super) fn capture_query(dispatch: &mut Dispatch<'_>, sql: &str, params: &[&str]) {
    dispatch.capture(&capture_unit(sql, params));
}

/// [`capture_query`] sent right behind the client's last unit instead of at the next
/// boundary (see [`Dispatch::capture_behind`]): the caller knows that unit is complete and
/// cannot leave the upstream in COPY.
pub(super) fn capture_query_behind(dispatch: &mut Dispatch<'_>, sql: &str, params: &[&str]) {
    dispatch.capture_behind(&capture_unit(sql, params));
}

/// Larder's own question as one unit on its own statement and portal, ending with Sync.
fn capture_unit(sql: &str, params: &[&str]) -> BytesMut {
    let mut buf = BytesMut::new();
    Parse {
        name: CAPTURE_NAME.into(),
        query: sql.into(),
        param_types: vec![TEXT_OID; params.len()],
    }
    .encode(&mut buf);
    Bind {
        portal: CAPTURE_NAME.into(),
        statement: CAPTURE_NAME.into(),
        param_formats: Vec::new(),
        params: params
            .iter()
            .map(|p| Some(Bytes::copy_from_slice(p.as_bytes())))
            .collect(),
        result_formats: Vec::new(),
    }
    .encode(&mut buf);
    Execute {
        portal: CAPTURE_NAME.into(),
        max_rows: 0,
    }
    .encode(&mut buf);
    Close {
        target: Target::Portal,
        name: CAPTURE_NAME.into(),
    }
    .encode(&mut buf);
    Close {
        target: Target::Statement,
        name: CAPTURE_NAME.into(),
    }
    .encode(&mut buf);
    Sync.encode(&mut buf);
    buf
}

/// What the router knows of the session state a cached answer depends on: the current role
/// (privileges), the `search_path` and the temporary schema (how relation names resolve). Each
/// is known from the start-up packet and the role and database defaults, followed through the
/// statements the session sends, or asked of the upstream in one captured question whenever a
/// statement may have changed it in a way Larder cannot follow exactly (`SET LOCAL`, a
/// function call, procedural code, a transaction that may roll a change back, ...).
pub(super) struct SessionFacts {
    role: Option<String>,
    path: Option<Vec<PathEntry>>,
    /// `Some(None)`: the session has no temporary schema; `None`: unknown.
    temp_schema: Option<Option<String>>,
    /// What `RESET search_path` returns to; `None` when unknown.
    default_path: Option<Vec<PathEntry>>,
    /// The role and database defaults were not known yet when the session started: they are
    /// looked up again (while nothing has changed the path since).
    defaults_pending: bool,
    /// Bumped by every change: an answer to a question asked before it is stale.
    epoch: u64,
    /// The epoch a question is out for.
    asking: Option<u64>,
    /// Something changed inside a transaction block (or in a way Larder could not follow): a
    /// transaction end may undo it, so each one forgets the facts again.
    touched: bool,
}

/// The captured question that learns every fact at once.
const FACTS_SQL: &str = "SELECT CURRENT_USER::text, pg_catalog.current_setting('search_path'), \
     pg_catalog.current_setting('extra_float_digits'), pg_catalog.current_setting('bytea_output'), \
     CASE WHEN pg_catalog.pg_my_temp_schema() = 0 THEN NULL \
          ELSE pg_catalog.pg_my_temp_schema()::pg_catalog.regnamespace::text END";

/// Output settings read with the facts.
pub(super) struct OutputSettings {
    pub(super) custom: bool,
}

impl SessionFacts {
    pub(super) fn new(session: &SessionState, backend: &dyn CacheBackend) -> SessionFacts {
        let mut defaults_pending = false;
        let default_path = match search_path::from_startup(session.startup_params()) {
            Some(from_packet) => from_packet,
            None => {
                let d = backend.default_search_path(session.user(), session.database());
                defaults_pending = d.is_none();
                d.and_then(|v| search_path::parse_value(&v))
            }
        };
        SessionFacts {
            role: Some(session.user().to_string()),
            path: default_path.clone(),
            temp_schema: Some(None),
            default_path,
            defaults_pending,
            epoch: 0,
            asking: None,
            touched: false,
        }
    }

    /// Learns the role and database defaults of `search_path` if they were not known when the
    /// session started and nothing has changed the path since.
    pub(super) fn catch_up_defaults(&mut self, session: &SessionState, backend: &dyn CacheBackend) {
        if !self.defaults_pending {
            return;
        }
        if let Some(v) = backend.default_search_path(session.user(), session.database()) {
            self.defaults_pending = false;
            self.default_path = search_path::parse_value(&v);
            if self.epoch == 0 && self.asking.is_none() {
                self.path = self.default_path.clone();
            }
        }
    }

    /// Bumped by every change of the facts.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(super) fn role(&self) -> Option<&str> {
        self.role.as_deref()
    }

    /// Role, `search_path` and temporary schema, when all are known.
    pub(super) fn resolution(&self) -> Option<(&str, &[PathEntry], Option<&str>)> {
        Some((
            self.role.as_deref()?,
            self.path.as_deref()?,
            self.temp_schema.as_ref()?.as_deref(),
        ))
    }

    /// Asks the upstream for every fact, unless a question is already out.
    pub(super) fn ask(&mut self, dispatch: &mut Dispatch<'_>) -> bool {
        if self.asking.is_some() {
            return false;
        }
        capture_query(dispatch, FACTS_SQL, &[]);
        self.asking = Some(self.epoch);
        true
    }

    /// The answer to [`SessionFacts::ask`].
    pub(super) fn on_answer(&mut self, row: &[Option<String>]) -> OutputSettings {
        let value = |i: usize| row.get(i).cloned().flatten();
        let float_digits = value(2).and_then(|v| v.trim().parse::<i32>().ok());
        let bytea = value(3);
        let output = OutputSettings {
            custom: float_digits.is_none_or(|d| d < 1) || bytea.as_deref() != Some("hex"),
        };
        let asked_at = self.asking.take();
        if asked_at != Some(self.epoch) || row.is_empty() {
            // Something changed after the question was sent: the answer may predate it.
            return output;
        }
        self.role = value(0);
        self.path = value(1).and_then(|p| search_path::parse_value(&p));
        self.temp_schema = Some(value(4).and_then(
            |t| match search_path::parse_value(&t)?.pop()? {
                PathEntry::Schema(s) => Some(s),
                _ => None,
            },
        ));
        output
    }

    fn forget(&mut self, role: bool, path: bool, temp: bool) {
        self.epoch += 1;
        self.defaults_pending &= !path;
        if role {
            self.role = None;
        }
        if path {
            self.path = None;
        }
        if temp {
            self.temp_schema = None;
        }
    }

    /// Follows a statement forwarded upstream. `in_block`: it runs inside a transaction block
    /// or a multi-statement string (a later failure or rollback may undo it).
    pub(super) fn watch(
        &mut self,
        kind: StatementKind,
        sql: &str,
        may_change_settings: bool,
        in_block: bool,
    ) {
        let ends_transaction = matches!(
            kind,
            StatementKind::Transaction(
                TransactionKind::Commit
                    | TransactionKind::Rollback
                    | TransactionKind::RollbackToSavepoint
            )
        );
        if ends_transaction && self.touched {
            self.forget(true, true, false);
            return;
        }
        if may_change_role(kind, sql, may_change_settings) {
            self.touched = true;
            self.forget(true, false, false);
        }
        if may_change_settings {
            self.touched = true;
            self.forget(true, true, false);
        }
        match search_path::statement_change(sql) {
            PathChange::None => {}
            PathChange::Set(p) if kind == StatementKind::Set && !in_block => {
                self.epoch += 1;
                self.path = Some(p);
            }
            PathChange::Reset if kind == StatementKind::Set && !in_block => {
                self.epoch += 1;
                self.path = self.default_path.clone();
            }
            _ => {
                self.touched = true;
                self.forget(false, true, false);
            }
        }
        // A temporary relation may have been created (or dropped): the temporary schema is
        // asked for again.
        if kind == StatementKind::Other
            && (contains_ignore_ascii_case(sql, "temp")
                || contains_ignore_ascii_case(sql, "discard"))
        {
            self.forget(false, false, true);
        }
    }

    pub(super) fn context(&self, session_user: &str) -> StatementContext {
        StatementContext {
            role: self.role.clone(),
            session_user: session_user.to_string(),
            search_path: self.path.clone(),
            temp_schema: self.temp_schema.clone(),
            mysql: None,
        }
    }
}

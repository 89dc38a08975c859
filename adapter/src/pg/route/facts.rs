//! What the router knows about a session's state that changes how a query is answered:
//! output settings, the current role, statements that may change them, and Larder's own
//! captured questions to the upstream.

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
        Some(i) => {
            sql[i + 1..]
                .trim_matches(|c: char| c.is_whitespace() || c == ';')
                .len()
                > 0
        }
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
    dispatch.capture(&buf);
}

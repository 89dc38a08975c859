//! `search_path`: parsing its value the way Postgres does, recognizing the statements that set
//! it, and resolving an unqualified relation name along it.
//!
//! Postgres resolves an unqualified relation name by searching, in order: the session's
//! temporary schema (unless `pg_temp` is listed explicitly), `pg_catalog` (unless listed
//! explicitly), then the listed schemas, with `$user` standing for the current role. Schemas
//! that do not exist are skipped. The first schema holding a relation of that name (of any
//! kind: table, view, sequence, ...) wins.

/// One entry of a `search_path` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathEntry {
    /// `$user`: the schema named like the current role, if it exists.
    User,
    /// `pg_temp`: the session's temporary schema.
    Temp,
    Schema(String),
}

/// Parses a `search_path` value as Postgres stores it (`"$user", public`): a comma-separated
/// list of identifiers, unquoted ones folded to lower case. `None` when it is malformed.
pub fn parse_value(value: &str) -> Option<Vec<PathEntry>> {
    let mut out = Vec::new();
    let mut rest = value.trim_start();
    if rest.is_empty() {
        return Some(out);
    }
    loop {
        let (name, after) = if rest.starts_with('"') {
            take_quoted(rest, '"')?
        } else {
            let end = rest
                .find(|c: char| c == ',' || c.is_whitespace())
                .unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            (rest[..end].to_lowercase(), &rest[end..])
        };
        out.push(match name.as_str() {
            "$user" => PathEntry::User,
            "pg_temp" => PathEntry::Temp,
            _ => PathEntry::Schema(name),
        });
        rest = after.trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r.trim_start(),
            None if rest.is_empty() => return Some(out),
            None => return None,
        }
    }
}

/// The default `search_path`.
pub fn default_path() -> Vec<PathEntry> {
    vec![PathEntry::User, PathEntry::Schema("public".into())]
}

/// What a statement does to `search_path`, as far as a cheap look at its text can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathChange {
    /// It does not touch `search_path`.
    None,
    /// `SET [SESSION] search_path ...`: the new value for the session.
    Set(Vec<PathEntry>),
    /// `RESET search_path`, `SET search_path TO DEFAULT`: back to the session's default.
    Reset,
    /// Anything Larder cannot follow exactly (`SET LOCAL`, `set_config`, `RESET ALL`, ...).
    Unknown,
}

/// Recognizes `SET [SESSION] search_path {TO|=} list`, `SET search_path TO DEFAULT` and
/// `RESET search_path` in one statement's text. Any other statement that mentions
/// `search_path` (or may reset every setting) is `Unknown`.
pub fn statement_change(sql: &str) -> PathChange {
    let mentions = contains_ci(sql, "search_path");
    let words = leading_words(sql, 3);
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match w(0) {
        "reset" | "discard" if w(1) == "all" => return PathChange::Unknown,
        "discard" => return PathChange::None,
        _ => {}
    }
    if !mentions {
        return PathChange::None;
    }
    let trimmed = sql.trim().trim_end_matches(';').trim_end();
    if w(0) == "reset" && w(1) == "search_path" && words.len() == 2 {
        return PathChange::Reset;
    }
    if w(0) != "set" {
        return PathChange::Unknown;
    }
    let (scope_words, name_at) = match w(1) {
        "session" => (1, 2),
        "local" => return PathChange::Unknown,
        _ => (0, 1),
    };
    if w(name_at) != "search_path" {
        return PathChange::Unknown;
    }
    // The text after the variable name.
    let Some(at) = find_ci(trimmed, "search_path") else {
        return PathChange::Unknown;
    };
    let _ = scope_words;
    let rest = trimmed[at + "search_path".len()..].trim_start();
    let value = if let Some(v) = rest.strip_prefix('=') {
        v
    } else if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case("to") {
        &rest[2..]
    } else {
        return PathChange::Unknown;
    }
    .trim();
    if value.eq_ignore_ascii_case("default") {
        return PathChange::Reset;
    }
    match parse_set_list(value) {
        Some(list) => PathChange::Set(list),
        None => PathChange::Unknown,
    }
}

/// The value list of a `SET`: identifiers and string literals, comma-separated. Each string
/// literal is one schema name, exactly as written (`SET search_path = 'a, b'` names the one
/// schema `a, b`).
fn parse_set_list(value: &str) -> Option<Vec<PathEntry>> {
    let mut out = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start();
        let (entry, after) = if rest.starts_with('\'') {
            let (s, after) = take_quoted(rest, '\'')?;
            // Backslash escapes (E'' strings, standard_conforming_strings off): not followed.
            if s.contains('\\') {
                return None;
            }
            let e = match s.as_str() {
                "$user" => PathEntry::User,
                "pg_temp" => PathEntry::Temp,
                _ => PathEntry::Schema(s),
            };
            (e, after)
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let item = rest[..end].trim();
            let mut parsed = parse_value(item)?;
            if parsed.len() != 1 {
                return None;
            }
            (parsed.pop()?, &rest[end..])
        };
        out.push(entry);
        rest = after.trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r,
            None if rest.is_empty() => return Some(out),
            None => return None,
        }
    }
}

/// The quoted token at the start of `text` (which starts with `quote`), with doubled quotes
/// undone, and the text after it; `None` when it is not closed.
fn take_quoted(text: &str, quote: char) -> Option<(String, &str)> {
    let body = &text[quote.len_utf8()..];
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != quote {
            out.push(c);
        } else if chars.peek().map(|&(_, n)| n) == Some(quote) {
            out.push(quote);
            chars.next();
        } else {
            return Some((out, &body[i + quote.len_utf8()..]));
        }
    }
    None
}

/// `search_path` from the start-up packet: a `search_path` parameter, or `-c search_path=...`
/// (also `--search_path=...`) in `options`. `None` when neither sets it, `Some(None)` when it
/// is set in a way Larder cannot follow.
pub fn from_startup(params: &[(String, String)]) -> Option<Option<Vec<PathEntry>>> {
    let mut found = None;
    for (k, v) in params {
        if k == "search_path" {
            found = Some(parse_value(v));
        } else if k == "options" && contains_ci(v, "search_path") {
            found = Some(options_search_path(v));
        }
    }
    found
}

fn options_search_path(options: &str) -> Option<Vec<PathEntry>> {
    // Backslash escapes spaces inside one option; give up on them.
    if options.contains('\\') {
        return None;
    }
    let mut words = options.split_whitespace();
    let mut value = None;
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words.next()?
        } else if let Some(s) = w.strip_prefix("-c") {
            s
        } else if let Some(s) = w.strip_prefix("--") {
            s
        } else {
            continue;
        };
        if let Some((name, v)) = setting.split_once('=') {
            if name.eq_ignore_ascii_case("search_path") {
                value = Some(v);
            }
        }
    }
    parse_value(value?)
}

/// Where an unqualified relation name resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// To this schema.
    Schema(String),
    /// To the session's temporary schema.
    Temp,
    /// Nowhere (the upstream will say the relation does not exist).
    Missing,
}

/// Resolves `name` along `path` for `role`. `has(schema, name)` says whether the schema holds a
/// relation of that name; `temp_has(name)` the same for the session's temporary schema.
pub fn resolve(
    path: &[PathEntry],
    role: &str,
    name: &str,
    has: &dyn Fn(&str, &str) -> bool,
    temp_has: &dyn Fn(&str) -> bool,
) -> Resolved {
    if !path.contains(&PathEntry::Temp) && temp_has(name) {
        return Resolved::Temp;
    }
    let catalog_listed = path
        .iter()
        .any(|e| matches!(e, PathEntry::Schema(s) if s == "pg_catalog"));
    if !catalog_listed && has("pg_catalog", name) {
        return Resolved::Schema("pg_catalog".into());
    }
    for e in path {
        match e {
            PathEntry::Temp if temp_has(name) => return Resolved::Temp,
            PathEntry::Temp => {}
            PathEntry::User if has(role, name) => return Resolved::Schema(role.to_string()),
            PathEntry::User => {}
            PathEntry::Schema(s) if has(s, name) => return Resolved::Schema(s.clone()),
            PathEntry::Schema(_) => {}
        }
    }
    Resolved::Missing
}

/// The first `n` words of `sql`, lower-cased (letters, digits and `_`).
fn leading_words(sql: &str, n: usize) -> Vec<String> {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .take(n)
        .map(str::to_ascii_lowercase)
        .collect()
}

fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    (0..=h.len().checked_sub(n.len())?).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    find_ci(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str) -> PathEntry {
        PathEntry::Schema(name.into())
    }

    #[test]
    fn values_parse_like_postgres_stores_them() {
        assert_eq!(
            parse_value("\"$user\", public"),
            Some(vec![PathEntry::User, s("public")])
        );
        assert_eq!(
            parse_value("Tenant_A,\"Mixed Case\" , pg_temp"),
            Some(vec![s("tenant_a"), s("Mixed Case"), PathEntry::Temp])
        );
        assert_eq!(parse_value("\"a\"\"b\""), Some(vec![s("a\"b")]));
        assert_eq!(parse_value(""), Some(vec![]));
        assert_eq!(parse_value("a b"), None);
        assert_eq!(parse_value("\"open"), None);
    }

    #[test]
    fn set_statements_are_followed_or_marked_unknown() {
        assert_eq!(
            statement_change("SET search_path TO tenant_1, public"),
            PathChange::Set(vec![s("tenant_1"), s("public")])
        );
        assert_eq!(
            statement_change("set session search_path = 'a, b', \"X\";"),
            PathChange::Set(vec![s("a, b"), s("X")])
        );
        assert_eq!(
            statement_change("SET search_path = '$user', public"),
            PathChange::Set(vec![PathEntry::User, s("public")])
        );
        assert_eq!(statement_change("RESET search_path"), PathChange::Reset);
        assert_eq!(
            statement_change("SET search_path TO DEFAULT"),
            PathChange::Reset
        );
        assert_eq!(
            statement_change("SET LOCAL search_path TO x"),
            PathChange::Unknown
        );
        assert_eq!(statement_change("RESET ALL"), PathChange::Unknown);
        assert_eq!(statement_change("DISCARD ALL"), PathChange::Unknown);
        assert_eq!(
            statement_change("SELECT set_config('search_path', 'x', false)"),
            PathChange::Unknown
        );
        assert_eq!(statement_change("SET TimeZone = 'UTC'"), PathChange::None);
        assert_eq!(statement_change("DISCARD PLANS"), PathChange::None);
        assert_eq!(statement_change("SET search_path"), PathChange::Unknown);
        // Backslash escapes are not followed; doubled quotes are.
        assert_eq!(
            statement_change("SET search_path = 'a\\'b'"),
            PathChange::Unknown
        );
        assert_eq!(
            statement_change("SET search_path = 'it''s'"),
            PathChange::Set(vec![s("it's")])
        );
    }

    #[test]
    fn startup_parameters_and_options() {
        let p = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(from_startup(&p("user", "x")), None);
        assert_eq!(
            from_startup(&p("options", "-c search_path=tenant,public")),
            Some(Some(vec![s("tenant"), s("public")]))
        );
        assert_eq!(
            from_startup(&p("options", "-csearch_path=a --work_mem=4MB")),
            Some(Some(vec![s("a")]))
        );
        assert_eq!(
            from_startup(&p("search_path", "b")),
            Some(Some(vec![s("b")]))
        );
        assert_eq!(
            from_startup(&p("options", "-c search_path=a\\ b")),
            Some(None)
        );
    }

    #[test]
    fn resolution_follows_postgres_order() {
        let rels = [
            ("public", "items"),
            ("tenant", "items"),
            ("alice", "mine"),
            ("pg_catalog", "pg_class"),
        ];
        let has = |sc: &str, n: &str| rels.contains(&(sc, n));
        let no_temp = |_: &str| false;
        let path = vec![PathEntry::User, s("public")];
        assert_eq!(
            resolve(&path, "bob", "items", &has, &no_temp),
            Resolved::Schema("public".into())
        );
        assert_eq!(
            resolve(&path, "alice", "mine", &has, &no_temp),
            Resolved::Schema("alice".into())
        );
        let tenant = vec![s("tenant"), s("public")];
        assert_eq!(
            resolve(&tenant, "bob", "items", &has, &no_temp),
            Resolved::Schema("tenant".into())
        );
        assert_eq!(
            resolve(&tenant, "bob", "pg_class", &has, &no_temp),
            Resolved::Schema("pg_catalog".into())
        );
        assert_eq!(
            resolve(&tenant, "bob", "nope", &has, &no_temp),
            Resolved::Missing
        );
        let temp_items = |n: &str| n == "items";
        assert_eq!(
            resolve(&tenant, "bob", "items", &has, &temp_items),
            Resolved::Temp
        );
        let temp_last = vec![s("public"), PathEntry::Temp];
        assert_eq!(
            resolve(&temp_last, "bob", "items", &has, &temp_items),
            Resolved::Schema("public".into())
        );
    }
}

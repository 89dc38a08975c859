//! What a statement a MySQL session relays does to the session, as far as its cache path
//! cares: reads, `USE`, `SET` (and whether the setting changes results), and anything that
//! may write. Read from the text alone, before or without the upstream's answer.

/// What a statement Larder relays does to the session, as far as the cache path cares.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Effect {
    /// Reads only (SELECT, SHOW, ...).
    Read,
    /// `USE db`.
    Use(String),
    /// `SET ...`: `changed` says why when a setting changes results; `utc` whether the
    /// session's time zone is now UTC, when it set it.
    Set {
        changed: Option<String>,
        utc: Option<bool>,
    },
    /// Anything else may write.
    Write,
    /// Several statements, or one Larder cannot follow.
    Unknown,
}

/// Settings whose change leaves cached answers exact: how text is sent (checked against the
/// upstream's column descriptions) and transaction behaviour (followed from status flags).
const HARMLESS_SETTINGS: &[&str] = &[
    "names",
    "character",
    "charset",
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
    "autocommit",
    "transaction",
    "session_track_schema",
    "session_track_state_change",
    "session_track_system_variables",
    "session_track_transaction_info",
    "net_write_timeout",
    "net_read_timeout",
    "wait_timeout",
    "interactive_timeout",
    "max_execution_time",
    "max_statement_time",
];

pub(super) fn effect_of(text: &str) -> Effect {
    let t = text.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
    let t = t.trim_end_matches(|c: char| c.is_whitespace() || c == ';');
    if t.contains(';') {
        return Effect::Unknown;
    }
    let mut words = t.split(|c: char| c.is_whitespace() || c == '=');
    let first = words.next().unwrap_or_default().to_ascii_lowercase();
    match first.as_str() {
        "select" | "show" | "describe" | "desc" | "explain" | "help" | "with" | "values"
        | "table" => Effect::Read,
        "use" => {
            let db = words.find(|w| !w.is_empty()).unwrap_or_default();
            let db = db.trim_matches('`');
            if db.is_empty() || db.contains('`') {
                Effect::Unknown
            } else {
                Effect::Use(db.to_string())
            }
        }
        "set" => {
            let mut utc = None;
            for assignment in t[3..].split(',') {
                let mut name = assignment.trim().to_ascii_lowercase();
                let mut global = false;
                for prefix in [
                    "session ",
                    "local ",
                    "global ",
                    "@@session.",
                    "@@local.",
                    "@@global.",
                    "@@",
                ] {
                    if let Some(rest) = name.strip_prefix(prefix) {
                        global = prefix.contains("global");
                        name = rest.trim_start().to_string();
                        break;
                    }
                }
                if name.starts_with('@') {
                    continue; // a user variable
                }
                let var: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if var == "time_zone" {
                    if !global {
                        // Followed: TIMESTAMP caches serve while the zone is UTC.
                        let value = name[var.len()..]
                            .trim_start()
                            .trim_start_matches(':')
                            .trim_start_matches('=')
                            .trim()
                            .trim_matches(|c| c == '\'' || c == '"');
                        utc = Some(larder_sql::mysql::is_utc_zone(value));
                    }
                    continue;
                }
                if !HARMLESS_SETTINGS.contains(&var.as_str()) {
                    return Effect::Set {
                        changed: Some(format!("the session set {var}")),
                        utc,
                    };
                }
            }
            Effect::Set { changed: None, utc }
        }
        _ => Effect::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_affect_the_session_as_expected() {
        assert_eq!(effect_of("SELECT 1"), Effect::Read);
        assert_eq!(effect_of("  show tables"), Effect::Read);
        assert_eq!(effect_of("USE `shop`"), Effect::Use("shop".into()));
        assert_eq!(effect_of("use shop;"), Effect::Use("shop".into()));
        let harmless = Effect::Set {
            changed: None,
            utc: None,
        };
        assert_eq!(effect_of("SET NAMES utf8mb4"), harmless);
        assert_eq!(effect_of("SET autocommit=1"), harmless);
        assert_eq!(effect_of("SET @x = 5"), harmless);
        assert_eq!(
            effect_of("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"),
            harmless
        );
        assert_eq!(
            effect_of("set sql_mode = 'ANSI_QUOTES'"),
            Effect::Set {
                changed: Some("the session set sql_mode".into()),
                utc: None
            }
        );
        let zone = |utc| Effect::Set {
            changed: None,
            utc: Some(utc),
        };
        assert_eq!(effect_of("SET SESSION time_zone = '+02:00'"), zone(false));
        assert_eq!(effect_of("SET @@session.time_zone = '+02:00'"), zone(false));
        assert_eq!(effect_of("SET time_zone='+00:00'"), zone(true));
        assert_eq!(
            effect_of("set time_zone = \"UTC\", names utf8mb4"),
            zone(true)
        );
        assert_eq!(effect_of("SET GLOBAL time_zone = '+02:00'"), harmless);
        assert_eq!(effect_of("INSERT INTO t VALUES (1)"), Effect::Write);
        assert_eq!(effect_of("COMMIT"), Effect::Write);
        assert_eq!(effect_of("SELECT 1; SET sql_mode=''"), Effect::Unknown);
    }
}

//! What a function call makes of a query's result: some give another value at every call
//! (the clock, random numbers, sequences), some read the session rather than data. The
//! dataflow refuses both (a maintained result must be a function of the tables); a shallow
//! cache refuses them by default ([`crate::shallow`]), except those that name the current
//! role, whose results it keeps per role anyway. Postgres' and MySQL's names together.

/// Functions whose result differs between calls with the same arguments.
const CHANGES_PER_CALL: &[&str] = &[
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "random",
    "random_normal",
    "setseed",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v4",
    "nextval",
    "currval",
    "lastval",
    "setval",
    "txid_current",
    "pg_current_xact_id",
    "pg_current_wal_lsn",
    "age",
    "rand",
    "uuid",
    "uuid_short",
    "sysdate",
    "curdate",
    "curtime",
    "utc_timestamp",
    "utc_date",
    "utc_time",
    "unix_timestamp",
    "last_insert_id",
    "found_rows",
    "row_count",
];

/// Functions that describe the server and the database: the same for every session a cache
/// serves, but not data the dataflow maintains.
const SERVER_FACTS: &[&str] = &["version", "current_database", "current_catalog"];

/// Functions that only wait: their value is constant, but running them is the point.
const WAITS: &[&str] = &["pg_sleep", "sleep"];

/// Functions that name the current role: the same for every session of one role.
const CURRENT_ROLE: &[&str] = &["current_user", "current_role", "user"];

/// Functions that read the session (or the server) rather than data.
const READS_SESSION: &[&str] = &[
    "session_user",
    "current_schema",
    "current_schemas",
    "current_setting",
    "set_config",
    "pg_backend_pid",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
    "pg_my_temp_schema",
    "pg_is_other_temp_schema",
    "pg_trigger_depth",
    "pg_conf_load_time",
    "pg_postmaster_start_time",
    "connection_id",
    "database",
    "schema",
];

/// The function gives another value at every call.
pub fn changes_per_call(name: &str) -> bool {
    CHANGES_PER_CALL.contains(&name)
}

/// The function names the current role (per-role results stay exact).
pub fn names_current_role(name: &str) -> bool {
    CURRENT_ROLE.contains(&name)
}

/// The function reads the session or the server (the current role aside).
pub fn reads_session(name: &str) -> bool {
    READS_SESSION.contains(&name)
}

/// A maintained result cannot contain the function's value (nor run it).
pub fn nondeterministic(name: &str) -> bool {
    changes_per_call(name)
        || names_current_role(name)
        || reads_session(name)
        || SERVER_FACTS.contains(&name)
        || WAITS.contains(&name)
}

//! End-to-end: a cache hit never shows a role what the database would refuse it.
//!
//! One Larder deployment in front of a fresh database with roles of every kind: a plain
//! reader, a role with no privileges, one with column privileges only, one that reads through
//! a group role, one without USAGE on the schema, and one under a row security policy. Each
//! asks the same cached queries through Larder; the answers (rows, or the upstream's 42501)
//! must equal what that role gets directly, and `EXPLAIN LAST STATEMENT` says where they came
//! from. GRANT and REVOKE must take effect within the privilege poll bound, `SET ROLE` must be
//! honoured, and managing caches needs a superuser or `--admin-role`.

mod common;

use std::time::{Duration, Instant};

use common::client::*;
use common::CachingLarder;
use tokio_postgres::Client;

const PASSWORD: &str = "Priv-Test-pw-1";

struct Setup {
    base: CachingLarder,
    /// Prefix of every role this test creates (roles are cluster-wide).
    p: String,
}

impl std::ops::Deref for Setup {
    type Target = CachingLarder;
    fn deref(&self) -> &CachingLarder {
        &self.base
    }
}

impl Setup {
    fn role(&self, name: &str) -> String {
        format!("{}_{name}", self.p)
    }

    fn direct_as(&self, role: &str) -> String {
        format!(
            "postgresql://{}:{PASSWORD}@{}:{}/{}",
            self.role(role),
            self.pg.host(),
            self.pg.port(),
            self.db
        )
    }

    fn larder_as(&self, role: &str) -> String {
        self.larder.pg_url(&self.role(role), PASSWORD, &self.db)
    }

    fn larder_admin(&self) -> String {
        self.admin_url()
    }
}

fn setup(prefix: &str) -> Setup {
    // Roles are cluster-wide: name them after a unique prefix.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let p = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let r = |n: &str| format!("{p}_{n}");
    let sql = format!(
        "CREATE TABLE items (id int PRIMARY KEY, name text, secret text);
         INSERT INTO items SELECT g, 'item ' || g, 'secret ' || g FROM generate_series(1, 20) g;
         CREATE SCHEMA hidden;
         CREATE TABLE hidden.notes (id int PRIMARY KEY, body text);
         INSERT INTO hidden.notes VALUES (1, 'note 1'), (2, 'note 2');
         CREATE TABLE docs (id int PRIMARY KEY, owner text NOT NULL, body text);
         INSERT INTO docs SELECT g, CASE WHEN g % 2 = 0 THEN '{rls}' ELSE 'someone' END, 'doc ' || g
           FROM generate_series(1, 10) g;
         ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_docs ON docs FOR SELECT USING (owner = current_user);
         CREATE ROLE {reader} LOGIN PASSWORD '{PASSWORD}';
         CREATE ROLE {nobody} LOGIN PASSWORD '{PASSWORD}';
         CREATE ROLE {cols} LOGIN PASSWORD '{PASSWORD}';
         CREATE ROLE {group} NOLOGIN;
         CREATE ROLE {member} LOGIN PASSWORD '{PASSWORD}' IN ROLE {group};
         CREATE ROLE {nousage} LOGIN PASSWORD '{PASSWORD}';
         CREATE ROLE {rls} LOGIN PASSWORD '{PASSWORD}';
         CREATE ROLE {admins} NOLOGIN;
         CREATE ROLE {ops} LOGIN PASSWORD '{PASSWORD}' IN ROLE {admins};
         GRANT SELECT ON items, hidden.notes, docs TO {reader};
         GRANT USAGE ON SCHEMA hidden TO {reader};
         GRANT SELECT (id, name) ON items TO {cols};
         GRANT SELECT ON items TO {group};
         GRANT SELECT ON hidden.notes TO {nousage};
         GRANT SELECT ON docs TO {rls};",
        rls = r("rls"),
        reader = r("reader"),
        nobody = r("nobody"),
        cols = r("cols"),
        group = r("group"),
        member = r("member"),
        nousage = r("nousage"),
        admins = r("admins"),
        ops = r("ops"),
    );
    let admin_role = r("admins");
    let base = CachingLarder::start(prefix, &sql, &["--admin-role", &admin_role]);
    Setup { base, p }
}

/// The same statement's outcome, as text: sorted rows, or the SQLSTATE.
async fn outcome(c: &Client, sql: &str) -> Result<Answer, String> {
    match try_query(c, sql).await {
        Ok(a) => Ok(a.sorted()),
        Err(e) => Err(e
            .as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_else(|| e.to_string())),
    }
}

/// Asks `sql` through Larder until it is answered by the cache; every answer on the way must
/// equal the direct one.
async fn until_hit(larder: &Client, direct: &Client, sql: &str) {
    let expected = outcome(direct, sql).await;
    let deadline = Instant::now() + WAIT;
    loop {
        assert_eq!(outcome(larder, sql).await, expected, "{sql}");
        let (dest, reason) = explain_last(larder).await;
        if dest == "cache" {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: never a hit: {reason}");
        tokio::time::sleep(POLL).await;
    }
}

/// Asks `sql` through Larder several times: the answer equals the direct one and never comes
/// from a cache; the last reason must mention `because`.
async fn never_hit(larder: &Client, direct: &Client, sql: &str, because: &str) {
    let expected = outcome(direct, sql).await;
    let mut reason = String::new();
    for _ in 0..5 {
        assert_eq!(outcome(larder, sql).await, expected, "{sql}");
        let (dest, r) = explain_last(larder).await;
        assert_eq!(dest, "upstream", "{sql} was answered from a cache");
        reason = r;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reason.contains(because),
        "{sql}: reason {reason:?} lacks {because:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_respect_privileges_row_security_and_roles() {
    let s = tokio::task::block_in_place(|| setup("privs"));
    let admin = connect(&s.larder_admin()).await;
    wait_streaming(&admin).await;
    let items = "SELECT id, name FROM items WHERE id = 3";
    let secret = "SELECT secret FROM items WHERE id = 3";
    let notes = "SELECT body FROM hidden.notes WHERE id = 1";
    let docs = "SELECT id, body FROM docs WHERE id IN (1, 2, 3, 4)";
    for sql in [items, secret, notes, docs] {
        q(&admin, &format!("CREATE CACHE FROM {sql}")).await;
    }
    // EXPLAIN CREATE CACHE tells about row security.
    let e = q(
        &admin,
        "EXPLAIN CREATE CACHE FROM SELECT body FROM docs WHERE id = 1",
    )
    .await;
    assert!(e.cell(0, "supported").contains("row security"), "{e:?}");

    // A reader with the table privilege is served from the cache.
    let reader = connect(&s.larder_as("reader")).await;
    let reader_d = connect(&s.direct_as("reader")).await;
    for sql in [items, secret, notes] {
        until_hit(&reader, &reader_d, sql).await;
    }

    // No privilege: the upstream's 42501, never a cached row.
    let nobody = connect(&s.larder_as("nobody")).await;
    let nobody_d = connect(&s.direct_as("nobody")).await;
    assert_eq!(outcome(&nobody_d, items).await, Err("42501".into()));
    never_hit(&nobody, &nobody_d, items, "no SELECT privilege").await;
    never_hit(&nobody, &nobody_d, notes, "USAGE").await;

    // Column privileges: the granted columns hit, the others are refused upstream.
    let cols = connect(&s.larder_as("cols")).await;
    let cols_d = connect(&s.direct_as("cols")).await;
    until_hit(&cols, &cols_d, items).await;
    never_hit(&cols, &cols_d, secret, "no SELECT privilege").await;

    // Through a group role.
    let member = connect(&s.larder_as("member")).await;
    let member_d = connect(&s.direct_as("member")).await;
    until_hit(&member, &member_d, items).await;

    // SELECT on the table but no USAGE on its schema.
    let nousage = connect(&s.larder_as("nousage")).await;
    let nousage_d = connect(&s.direct_as("nousage")).await;
    never_hit(&nousage, &nousage_d, notes, "USAGE").await;

    // Row security: every role the policy applies to (rls, and the reader too) is answered
    // upstream with its own rows; the superuser, exempt from policies, is served from the cache.
    let rls = connect(&s.larder_as("rls")).await;
    let rls_d = connect(&s.direct_as("rls")).await;
    never_hit(&rls, &rls_d, docs, "row security").await;
    assert_eq!(
        outcome(&rls, docs).await.unwrap().rows.len(),
        2,
        "the policy shows rls its own two documents"
    );
    never_hit(&reader, &reader_d, docs, "row security").await;
    until_hit(&admin, &admin, docs).await;

    // SET ROLE is honoured at once, and RESET ROLE serves again.
    q(&admin, &format!("SET ROLE {}", s.role("nobody"))).await;
    assert_eq!(outcome(&admin, items).await, Err("42501".into()));
    assert_eq!(explain_last(&admin).await.0, "upstream");
    q(&admin, "RESET ROLE").await;
    until_hit(&admin, &admin, items).await;
    // SET LOCAL ROLE ends with its transaction (caches do not answer inside it anyway).
    q(
        &admin,
        &format!("BEGIN; SET LOCAL ROLE {}; COMMIT", s.role("nobody")),
    )
    .await;
    until_hit(&admin, &admin, items).await;

    // REVOKE takes effect within the privilege poll bound; GRANT serves again.
    let direct_admin = connect(&s.pg.url(&s.db)).await;
    until_hit(&reader, &reader_d, items).await;
    q(
        &direct_admin,
        &format!("REVOKE SELECT ON items FROM {}", s.role("reader")),
    )
    .await;
    let revoked = Instant::now();
    loop {
        match outcome(&reader, items).await {
            Err(code) => {
                assert_eq!(code, "42501");
                break;
            }
            Ok(_) => {
                assert_eq!(explain_last(&reader).await.0, "cache");
                assert!(
                    revoked.elapsed() < Duration::from_secs(3),
                    "a revoked role was still served after {:?}",
                    revoked.elapsed()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("REVOKE took effect after {:?}", revoked.elapsed());
    never_hit(&reader, &reader_d, items, "no SELECT privilege").await;
    q(
        &direct_admin,
        &format!("GRANT SELECT ON items TO {}", s.role("reader")),
    )
    .await;
    until_hit(&reader, &reader_d, items).await;

    // Managing caches: CREATE CACHE needs SELECT on what the query reads; DROP needs a
    // superuser or a member of --admin-role; SHOW PROXIED QUERIES hides unreadable shapes.
    let (code, msg) = query_err(
        &nobody,
        "CREATE CACHE FROM SELECT name FROM items WHERE id = 1",
    )
    .await;
    assert_eq!(code, "42501", "{msg}");
    let (code, msg) = query_err(
        &cols,
        "CREATE CACHE FROM SELECT secret, name FROM items WHERE id = 1",
    )
    .await;
    assert_eq!(code, "42501", "{msg}");
    q(
        &cols,
        "CREATE CACHE FROM SELECT name FROM items WHERE id = 1",
    )
    .await;
    for stmt in ["DROP ALL CACHES", "DROP ALL PROXIED QUERIES"] {
        let (code, msg) = query_err(&reader, stmt).await;
        assert_eq!(code, "42501", "{stmt}: {msg}");
        assert!(msg.contains(&s.role("admins")), "{msg}");
    }
    let shown = q(&nobody, "SHOW PROXIED QUERIES").await;
    assert!(
        shown
            .rows
            .iter()
            .all(|r| !r[1].as_deref().unwrap_or("").contains("items")),
        "a role without privileges sees shapes of items: {shown:?}"
    );
    let shown = q(&reader, "SHOW PROXIED QUERIES").await;
    assert!(
        shown
            .rows
            .iter()
            .any(|r| r[1].as_deref().unwrap_or("").contains("items")),
        "the reader sees the shapes of items: {shown:?}"
    );
    let ops = connect(&s.larder_as("ops")).await;
    q(&ops, "DROP ALL PROXIED QUERIES").await;
    q(&ops, "DROP ALL CACHES").await;
    assert!(q(&admin, "SHOW CACHES").await.rows.is_empty());
}

/// A cache over several tables answers a role only if it may read every one of them (and
/// every column the query reads in each), learned per table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_caches_need_privileges_on_every_table() {
    let s = tokio::task::block_in_place(|| setup("privjoin"));
    let admin = connect(&s.larder_admin()).await;
    wait_streaming(&admin).await;
    let join =
        "SELECT i.name, n.body FROM items i JOIN hidden.notes n ON n.id = i.id WHERE i.id = 1";
    let count =
        "SELECT count(*) FROM items i WHERE i.id IN (SELECT id FROM hidden.notes) AND i.id = 2";
    for sql in [join, count] {
        q(&admin, &format!("CREATE CACHE FROM {sql}")).await;
    }
    let reader = connect(&s.larder_as("reader")).await;
    let reader_d = connect(&s.direct_as("reader")).await;
    for sql in [join, count] {
        until_hit(&reader, &reader_d, sql).await;
    }
    // SELECT on notes, but neither USAGE on its schema nor SELECT on items.
    let nousage = connect(&s.larder_as("nousage")).await;
    let nousage_d = connect(&s.direct_as("nousage")).await;
    for sql in [join, count] {
        never_hit(&nousage, &nousage_d, sql, "items").await;
    }
    // SELECT on items (through a group), nothing on notes: still refused, then granted.
    let member = connect(&s.larder_as("member")).await;
    let member_d = connect(&s.direct_as("member")).await;
    never_hit(&member, &member_d, join, "USAGE").await;
    q(
        &admin,
        &format!(
            "GRANT USAGE ON SCHEMA hidden TO {g}; GRANT SELECT ON hidden.notes TO {g}",
            g = s.role("group")
        ),
    )
    .await;
    for sql in [join, count] {
        until_hit(&member, &member_d, sql).await;
    }
}

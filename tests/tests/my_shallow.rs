//! End-to-end: shallow (TTL) caches on a MySQL/MariaDB upstream (issue #7): what the
//! upstream answered, kept per user, session settings and request, and sent again byte for
//! byte, for queries the dataflow does not compute as MySQL does.

#[path = "common/my_kit.rs"]
mod my_kit;
#[path = "common/my_setup.rs"]
mod my_setup;
use my_setup::Setup;

/// Shallow caches on MySQL keep what the upstream answered, for queries the dataflow does not
/// compute as MySQL does (AVG over floats, computed columns, text groups): a second read is
/// answered byte for byte (text and binary protocol), a session that wrote reads upstream,
/// entries expire with their TTL, a user is served only what the upstream answered that user,
/// and the cache comes back after `kill -9`.
#[test]
fn shallow_caches_keep_what_the_upstream_answered() {
    let mut s = Setup::with(
        "my_cache_shallow",
        "CREATE TABLE items (id INT PRIMARY KEY, kind VARCHAR(10), price DOUBLE);
         INSERT INTO items VALUES (1, 'a', 1.5), (2, 'B', 2.25), (3, 'A', 0.1), (4, 'b', NULL);",
        &["--shallow-ttl-seconds", "2"],
    );
    let (user, other) = (format!("{}_r", s.db), format!("{}_n", s.db));
    s.maria
        .query(
            &s.db,
            &format!(
                "CREATE USER '{user}'@'%' IDENTIFIED BY 'pw1';
                 GRANT SELECT ON {db}.items TO '{user}'@'%';
                 CREATE USER '{other}'@'%' IDENTIFIED BY 'pw2';
                 CREATE TABLE other_t (id INT PRIMARY KEY);
                 GRANT SELECT ON {db}.other_t TO '{other}'@'%';",
                db = s.db
            ),
        )
        .expect("users");
    let out = s.python(&format!(
        r#"
AGG = "SELECT kind, avg(price), count(*) FROM items GROUP BY kind ORDER BY kind"
ONE = "SELECT kind, price * 2, concat(kind, '!') FROM items WHERE id = %s"
w = connect(autocommit=True)
wc = w.cursor()
wc.execute("EXPLAIN CREATE CACHE FROM " + AGG)
explained = wc.fetchall()[0]
assert explained[2].startswith('no') and explained[3] == 'yes', explained
wc.execute("CREATE SHALLOW CACHE FROM " + AGG)
wc.execute("CREATE SHALLOW CACHE FROM " + ONE.replace("%s", "?"))
conns, tl, td, bl, bd, be = side_by_side()
def run(c, q, p=None):
    c.execute(q, p)
    return c.fetchall(), c.description
def where(c):
    c.execute("EXPLAIN LAST STATEMENT")
    return c.fetchall()[0]
def expect(w, dest):
    assert w[0] == dest, (dest, w)
def same(lc, dc, explain, q, p=None):
    got, want = run(lc, q, p), run(dc, q, p)
    assert got == want, (q, p, got, want)
    return where(explain)
# Text protocol: the first read fetches, the next is answered by Larder.
expect(same(tl, td, tl, AGG), 'upstream')
expect(same(tl, td, tl, AGG), 'larder')
# Binary protocol: one entry per parameter value.
expect(same(bl, bd, be, ONE, (2,)), 'upstream')
expect(same(bl, bd, be, ONE, (2,)), 'larder')
expect(same(bl, bd, be, ONE, (3,)), 'upstream')
expect(same(bl, bd, be, ONE, (3,)), 'larder')
# Another session of the same user is answered from the entries.
t2 = connect(autocommit=True, conv=RAW).cursor()
expect(same(t2, td, t2, AGG), 'larder')
# A session that writes reads upstream afterwards; its read refreshes nothing stale.
t2.execute("INSERT INTO items VALUES (5, 'c', 4.0)")
expect(same(t2, td, t2, AGG), 'upstream')
# Inside a transaction the upstream answers.
tl.execute("BEGIN")
expect(same(tl, td, tl, AGG), 'upstream')
tl.execute("COMMIT")
# Past the TTL, the entry is fetched again.
time.sleep(2.5)
expect(same(tl, td, tl, AGG), 'upstream')
expect(same(tl, td, tl, AGG), 'larder')
# Users: the reader fetches its own entry; a user without SELECT gets the server's error.
r = pymysql.connect(host=HOST, port=PORT, user="{user}", password="pw1", database=DB, conv=RAW, autocommit=True).cursor()
expect(same(r, td, r, AGG), 'upstream')
expect(same(r, td, r, AGG), 'larder')
n = pymysql.connect(host=HOST, port=PORT, user="{other}", password="pw2", database=DB, autocommit=True).cursor()
for _ in range(2):
    try:
        n.execute(AGG)
        raise SystemExit("a user without SELECT was answered")
    except pymysql.err.OperationalError as e:
        assert e.args[0] in (1142, 1044), e
wc.execute("SHOW CACHES")
kinds = [r for r in wc.fetchall() if 'shallow' in str(r)]
assert len(kinds) == 2, kinds
print("ok")
"#
    ));
    assert!(out.contains("ok"), "{out}");
    s.restart_after_kill9();
    let out = s.python(
        r#"
AGG = "SELECT kind, avg(price), count(*) FROM items GROUP BY kind ORDER BY kind"
c = connect(autocommit=True).cursor()
c.execute("SHOW CACHES")
assert sum('shallow' in str(r) for r in c.fetchall()) == 2
for expected in ('upstream', 'larder'):
    c.execute(AGG); c.fetchall()
    c.execute("EXPLAIN LAST STATEMENT")
    assert c.fetchall()[0][0] == expected
print("ok")
"#,
    );
    assert!(out.contains("ok"), "{out}");
}

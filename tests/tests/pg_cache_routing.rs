//! End-to-end: the routing rules that decide when a cache may answer, against a real
//! Postgres: transactions, other databases, Larder's own statements and `search_path`. Every
//! check compares Larder's answer with Postgres' own and asks `EXPLAIN LAST STATEMENT` where
//! it came from. The harness is `common/lifecycle.rs`.

mod common;

use common::client::*;
use common::lifecycle::*;
use larder_testkit::PgServer;

// ------------------------------------------------------------------------------------------
// Routing
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_transactions_databases_and_larder_statements() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "route", &[]));
    let other_db = tokio::task::block_in_place(|| pg.create_database("route_other").unwrap());
    let setup = "CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL, qty int);
                 CREATE TABLE u (id int PRIMARY KEY, t_id int);";
    psql(
        &d,
        &format!(
            "{setup} INSERT INTO t SELECT g, 'main ' || g, g FROM generate_series(1, 20) g;
             INSERT INTO u VALUES (1, 1);"
        ),
    );
    tokio::task::block_in_place(|| {
        pg.psql(
            &other_db,
            &format!(
                "{setup} INSERT INTO t SELECT g, 'other ' || g, -g FROM generate_series(1, 20) g;"
            ),
        )
        .unwrap()
    });
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;

    q(
        &lc,
        "CREATE CACHE t_by_id FROM SELECT * FROM t WHERE id = $1",
    )
    .await;
    cached_same_as_direct(&lc, &direct, "SELECT * FROM t WHERE id = 5").await;
    // Literals are parameters: other literals, IN lists and the extended protocol hit too.
    cached_same_as_direct(&lc, &direct, "SELECT * FROM t WHERE id IN (3, 4, 5)").await;
    let rows = lc
        .query("SELECT * FROM t WHERE id = $1", &[&6i32])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>("name"), "main 6");
    assert_eq!(explain_last(&lc).await.0, "cache");

    // Inside a transaction: upstream (the transaction sees its own writes).
    q(&lc, "BEGIN").await;
    q(&lc, "UPDATE t SET qty = 1000 WHERE id = 5").await;
    let a = q(&lc, "SELECT * FROM t WHERE id = 5").await;
    assert_eq!(a.cell(0, "qty"), "1000", "{a:?}");
    let (dest, reason) = explain_last(&lc).await;
    assert_eq!(dest, "upstream");
    assert!(reason.contains("transaction"), "reason: {reason}");
    q(&lc, "ROLLBACK").await;

    // An ALWAYS cache answers inside transactions.
    q(
        &lc,
        "CREATE CACHE ALWAYS t_names FROM SELECT name FROM t WHERE qty = $1",
    )
    .await;
    q(&lc, "BEGIN").await;
    let a = via_cache(&lc, "SELECT name FROM t WHERE qty = 7").await;
    assert_eq!(a.rows, vec![vec![Some("main 7".to_string())]]);
    q(&lc, "COMMIT").await;
    let caches = show_caches(&lc).await;
    let i = (0..caches.rows.len())
        .find(|&i| caches.cell(i, "name") == "t_names")
        .expect("t_names listed");
    assert!(
        caches.cell(i, "properties").contains("always"),
        "{caches:?}"
    );

    // Another database through the same Larder: proxied only, even for the same text.
    let other_url = larder.pg_url(pg.admin_user(), pg.admin_password(), &other_db);
    let oc = connect(&other_url).await;
    let other_direct = connect(&pg.url(&other_db)).await;
    for _ in 0..3 {
        let (dest, reason) =
            same_as_direct(&oc, &other_direct, "SELECT * FROM t WHERE id = 5").await;
        assert_eq!(dest, "upstream");
        assert!(reason.contains("database"), "reason: {reason}");
    }
    let a = q(&oc, "SELECT * FROM t WHERE id = 5").await;
    assert_eq!(a.cell(0, "name"), "other 5");
    drop(oc);

    // Unsupported: EXPLAIN names the construct, CREATE CACHE refuses with 0A000.
    const WINDOW: &str = "SELECT t.name, row_number() OVER (ORDER BY t.id) FROM t WHERE t.id = 1";
    let explained = q(&lc, &format!("EXPLAIN CREATE CACHE FROM {WINDOW}")).await;
    let supported = explained.cell(0, "supported").to_lowercase();
    assert!(
        supported.starts_with("no: ") && supported.contains("window"),
        "{explained:?}"
    );
    let (code, msg) = query_err(&lc, &format!("CREATE CACHE FROM {WINDOW}")).await;
    assert_eq!(code, "0A000", "{msg}");
    assert!(msg.to_lowercase().contains("window"), "{msg}");
    let explained = q(
        &lc,
        "EXPLAIN CREATE CACHE FROM SELECT qty FROM t WHERE name = 'x'",
    )
    .await;
    assert_eq!(explained.cell(0, "supported"), "yes", "{explained:?}");
    let explained = q(
        &lc,
        "EXPLAIN CREATE CACHE FROM SELECT * FROM t WHERE id = 9",
    )
    .await;
    assert_eq!(explained.cell(0, "supported"), "cached", "{explained:?}");

    // SHOW PROXIED QUERIES lists shapes that went upstream, with their status.
    command(&lc, "DROP ALL PROXIED QUERIES").await;
    same_as_direct(&lc, &direct, "SELECT qty FROM t WHERE name = 'main 3'").await;
    same_as_direct(&lc, &direct, "SELECT qty FROM t WHERE name = 'main 4'").await;
    same_as_direct(&lc, &direct, WINDOW).await;
    let proxied = q(&lc, "SHOW PROXIED QUERIES").await;
    let find = |needle: &str| {
        (0..proxied.rows.len())
            .find(|&i| proxied.cell(i, "query").contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in {proxied:?}"))
    };
    let by_name = find("WHERE name =");
    assert_eq!(proxied.cell(by_name, "supported"), "yes", "{proxied:?}");
    assert_eq!(proxied.cell(by_name, "count"), "2", "{proxied:?}");
    let window = find("OVER");
    assert!(
        proxied.cell(window, "supported").starts_with("unsupported"),
        "{proxied:?}"
    );
    let supported_only = q(&lc, "SHOW PROXIED SUPPORTED QUERIES").await;
    assert!(
        supported_only
            .rows
            .iter()
            .all(|r| !r[1].as_deref().unwrap_or("").contains("OVER")),
        "{supported_only:?}"
    );
    let id = proxied.cell(by_name, "query_id").to_string();
    let created = q(&lc, &format!("CREATE CACHE FROM {id}")).await;
    assert_eq!(created.cell(0, "query_id"), id, "{created:?}");
    cached_same_as_direct(&lc, &direct, "SELECT qty FROM t WHERE name = 'main 8'").await;

    // DROP CACHE by name and by id, then DROP ALL CACHES.
    command(&lc, "DROP CACHE t_by_id").await;
    let a = q(&lc, "SELECT * FROM t WHERE id = 5").await;
    assert_eq!(a, q(&direct, "SELECT * FROM t WHERE id = 5").await);
    let (dest, reason) = explain_last(&lc).await;
    assert_eq!(dest, "upstream", "{reason}");
    let err = lc.execute("DROP CACHE t_by_id", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42704"), "{err:?}");
    command(&lc, &format!("DROP CACHE {id}")).await;
    assert_eq!(show_caches(&lc).await.rows.len(), 1);
    command(&lc, "DROP ALL CACHES").await;
    assert!(show_caches(&lc).await.rows.is_empty());
    q(&lc, "SELECT name FROM t WHERE qty = 7").await;
    assert_eq!(explain_last(&lc).await.0, "upstream");
    drop_quietly(larder);
}

/// Unqualified names resolve per session: a session whose search_path finds another `t`
/// never gets the cached table's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_decides_which_table_a_query_reads() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "spath", &[]));
    psql(
        &d,
        "CREATE SCHEMA a; CREATE SCHEMA b;
         CREATE TABLE public.t (id int PRIMARY KEY, who text);
         CREATE TABLE a.t (id int PRIMARY KEY, who text);
         CREATE TABLE b.t (id int PRIMARY KEY, who text);
         INSERT INTO public.t SELECT g, 'public ' || g FROM generate_series(1, 5) g;
         INSERT INTO a.t SELECT g, 'a ' || g FROM generate_series(1, 5) g;
         INSERT INTO b.t SELECT g, 'b ' || g FROM generate_series(1, 5) g;",
    );
    let direct = connect(&d.direct_url()).await;
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    q(
        &lc,
        "CREATE CACHE t_by_id FROM SELECT * FROM t WHERE id = $1",
    )
    .await;
    let a = via_cache(&lc, "SELECT * FROM t WHERE id = 2").await;
    assert_eq!(a.cell(0, "who"), "public 2");

    for schema in ["b", "a"] {
        let s = connect(&d.larder_url(&larder)).await;
        let sd = connect(&d.direct_url()).await;
        q(&s, &format!("SET search_path TO {schema}")).await;
        q(&sd, &format!("SET search_path TO {schema}")).await;
        for _ in 0..3 {
            let (dest, reason) = same_as_direct(&s, &sd, "SELECT * FROM t WHERE id = 2").await;
            assert_eq!(dest, "upstream", "search_path {schema}: {reason}");
        }
        let a = q(&s, "SELECT * FROM t WHERE id = 2").await;
        assert_eq!(a.cell(0, "who"), format!("{schema} 2"));
    }

    // Switching search_path within one session after cache hits.
    let s = connect(&d.larder_url(&larder)).await;
    let a = via_cache(&s, "SELECT * FROM t WHERE id = 3").await;
    assert_eq!(a.cell(0, "who"), "public 3");
    q(&s, "SET search_path TO b, public").await;
    let a = q(&s, "SELECT * FROM t WHERE id = 3").await;
    assert_eq!(a.cell(0, "who"), "b 3", "{:?}", explain_last(&s).await);
    q(&s, "SELECT set_config('search_path', 'public', false)").await;
    let a = q(&s, "SELECT * FROM t WHERE id = 3").await;
    assert_eq!(a.cell(0, "who"), "public 3");
    q(&s, "BEGIN; SET LOCAL search_path TO a; COMMIT").await;
    let a = q(&s, "SELECT * FROM t WHERE id = 3").await;
    assert_eq!(a.cell(0, "who"), "public 3");
    drop(direct);
    drop_quietly(larder);
}

/// A function that changes `search_path` (no "search_path" in the statement text): the next
/// read must still resolve under the new path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_changed_inside_a_function_is_honoured() {
    let pg = PgServer::shared();
    let d = tokio::task::block_in_place(|| Deployment::new(pg, "spfunc", &[]));
    psql(
        &d,
        "CREATE SCHEMA b;
         CREATE TABLE public.t (id int PRIMARY KEY, who text);
         CREATE TABLE b.t (id int PRIMARY KEY, who text);
         INSERT INTO public.t VALUES (1, 'public');
         INSERT INTO b.t VALUES (1, 'b');
         CREATE FUNCTION use_b() RETURNS int LANGUAGE plpgsql AS
           $$ BEGIN PERFORM set_config('search_path', 'b', false); RETURN 1; END $$;",
    );
    let larder = start(&d);
    let lc = connect(&d.larder_url(&larder)).await;
    wait_streaming(&lc).await;
    q(&lc, "CREATE CACHE FROM SELECT * FROM t WHERE id = $1").await;
    let a = via_cache(&lc, "SELECT * FROM t WHERE id = 1").await;
    assert_eq!(a.cell(0, "who"), "public");
    q(&lc, "SELECT use_b()").await;
    let a = q(&lc, "SELECT * FROM t WHERE id = 1").await;
    let route = explain_last(&lc).await;
    assert_eq!(
        a.cell(0, "who"),
        "b",
        "read after a function switched search_path to b: {route:?}"
    );
    drop_quietly(larder);
}

//! The emergency switch (issue #8): `ALTER LARDER SET caching = off` sends every query upstream
//! at once, without a restart, while replication and the caches keep running;
//! `ALTER LARDER SET caching = on` lets the caches answer again, fresh. Only a superuser (or a
//! member of `--admin-role`) may flip it. `--caching off` (env `CACHING`) sets it at start.

#[path = "common/kit.rs"]
mod kit;

use kit::{Conn, Deployment};

const SETUP: &str = "CREATE TABLE items (id int PRIMARY KEY, v text); \
                     INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 10) g;";

async fn read(c: &Conn, id: i32) -> (Vec<Vec<Option<String>>>, String, String) {
    let rows = kit::text_rows(&c.client, &format!("SELECT v FROM items WHERE id = {id}")).await;
    let (dest, reason) = kit::explain_last(&c.client).await;
    (rows, dest, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_is_switched_off_and_on_by_a_superuser() {
    let role = format!("switch_user_{}", std::process::id());
    let d = Deployment::start(
        "emergency_switch",
        &format!(
            "{SETUP} CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT SELECT ON items TO {role};"
        ),
    );
    let larder = Conn::new(&d.larder_url()).await;
    let direct = Conn::new(&d.direct_url()).await;
    kit::wait_online(&larder.client).await;
    larder
        .client
        .simple_query("CREATE CACHE FROM SELECT v FROM items WHERE id = $1")
        .await
        .expect("CREATE CACHE");
    // The session's first read may go upstream while it learns the session's role and
    // search_path (not what this test is about).
    read(&larder, 1).await;
    assert_eq!(read(&larder, 1).await.1, "cache");

    // Not for an ordinary role.
    let user = Conn::new(&d.larder.pg_url(&role, "pw", &d.db)).await;
    let err = user
        .client
        .simple_query("ALTER LARDER SET caching = off")
        .await
        .expect_err("an ordinary role flipped the switch");
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("42501"),
        "{err}"
    );
    assert_eq!(read(&larder, 1).await.1, "cache");

    // Off: every session's queries go upstream at once, with the reason.
    larder
        .client
        .simple_query("ALTER LARDER SET caching = off")
        .await
        .expect("switch off");
    for c in [&larder, &user] {
        let (rows, dest, reason) = read(c, 2).await;
        assert_eq!(rows, vec![vec![Some("v2".to_string())]]);
        assert_eq!(dest, "upstream");
        assert!(reason.contains("caching is off"), "{reason}");
    }
    let st = kit::status(&larder.client).await;
    assert!(st["Caching"].starts_with("off"), "{st:?}");

    // Replication goes on meanwhile; on again, the caches answer with the new rows.
    direct
        .client
        .batch_execute("UPDATE items SET v = 'new' WHERE id = 3")
        .await
        .unwrap();
    kit::wait_consistent(&direct.client, &larder.client).await;
    larder
        .client
        .simple_query("ALTER LARDER SET caching TO on")
        .await
        .expect("switch on");
    let (rows, dest, _) = read(&user, 3).await;
    assert_eq!(rows, vec![vec![Some("new".to_string())]]);
    assert_eq!(dest, "cache");
    assert_eq!(kit::status(&larder.client).await["Caching"], "on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_off_at_start() {
    let d = Deployment::start_env("emergency_start", "", SETUP, &[("CACHING", "off")]);
    let larder = Conn::new(&d.larder_url()).await;
    kit::wait_online(&larder.client).await;
    larder
        .client
        .simple_query("CREATE CACHE FROM SELECT v FROM items WHERE id = $1")
        .await
        .expect("CREATE CACHE works while caching is off");
    let (rows, dest, reason) = read(&larder, 4).await;
    assert_eq!(rows, vec![vec![Some("v4".to_string())]]);
    assert_eq!(dest, "upstream");
    assert!(reason.contains("caching is off"), "{reason}");
    larder
        .client
        .simple_query("ALTER LARDER SET caching = on")
        .await
        .expect("switch on");
    let (_, dest, reason) = read(&larder, 4).await;
    assert_eq!(dest, "cache", "{reason}");
}

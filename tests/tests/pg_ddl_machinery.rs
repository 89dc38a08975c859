//! Larder's own DDL machinery upstream (issue #13): the event triggers that announce DDL in the
//! change stream, and the function they run, live in Larder's own schema `larder`, survive a
//! reset of the users' schemas, and are put back within the catalog poll when a user's DDL
//! removes or disables them.

use std::time::{Duration, Instant};

#[path = "common/kit.rs"]
mod kit;

use kit::{Conn, Deployment};

/// The catalog poll runs every second; allow for a busy machine.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(10);

/// (trigger name, enabled flag, schema.function) of Larder's event triggers.
async fn triggers(direct: &Conn) -> Vec<(String, String, String)> {
    kit::text_rows(
        &direct.client,
        "SELECT t.evtname::text, t.evtenabled::text, n.nspname || '.' || p.proname \
         FROM pg_event_trigger t JOIN pg_proc p ON p.oid = t.evtfoid \
         JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE t.evtname LIKE 'larder%' ORDER BY 1",
    )
    .await
    .into_iter()
    .map(|r| {
        let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        (get(0), get(1), get(2))
    })
    .collect()
}

fn installed() -> Vec<(String, String, String)> {
    ["larder_ddl_drop", "larder_ddl_end"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                "O".to_string(),
                "larder.ddl_announce".to_string(),
            )
        })
        .collect()
}

async fn wait_installed(direct: &Conn, after: &str) {
    let deadline = Instant::now() + REPAIR_TIMEOUT;
    loop {
        let now = triggers(direct).await;
        if now == installed() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {after}: Larder's DDL event triggers were not put back within {REPAIR_TIMEOUT:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_triggers_live_in_their_own_schema_and_are_repaired() {
    let d = Deployment::start(
        "ddl_machinery",
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');",
    );
    let larder = Conn::new(&d.larder_url()).await;
    let direct = Conn::new(&d.direct_url()).await;
    kit::wait_online(&larder.client).await;
    assert_eq!(triggers(&direct).await, installed());

    // A reset of the users' schema leaves Larder's machinery alone.
    direct
        .client
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        .await
        .expect("reset public");
    assert_eq!(
        triggers(&direct).await,
        installed(),
        "DROP SCHEMA public CASCADE removed Larder's DDL machinery"
    );

    // Removing Larder's schema, or disabling a trigger, is repaired within the catalog poll.
    direct
        .client
        .batch_execute("DROP SCHEMA larder CASCADE")
        .await
        .expect("drop larder schema");
    wait_installed(&direct, "DROP SCHEMA larder CASCADE").await;
    direct
        .client
        .batch_execute("ALTER EVENT TRIGGER larder_ddl_end DISABLE")
        .await
        .expect("disable trigger");
    wait_installed(&direct, "ALTER EVENT TRIGGER ... DISABLE").await;

    // Replication kept streaming throughout, and a table created after the reset is cached.
    direct
        .client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (2, 'b')",
        )
        .await
        .expect("re-create items");
    kit::wait_consistent(&direct.client, &larder.client).await;
    let st = kit::status(&larder.client).await;
    assert_eq!(
        st.get("Replication Status").map(String::as_str),
        Some("Streaming"),
        "{st:?}"
    );
    let deadline = Instant::now() + REPAIR_TIMEOUT;
    loop {
        match larder
            .client
            .simple_query("CREATE CACHE FROM SELECT v FROM items WHERE id = 2")
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("CREATE CACHE not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("CREATE CACHE on the re-created table: {e}"),
        }
    }
    let rows = kit::text_rows(&larder.client, "SELECT v FROM items WHERE id = 2").await;
    assert_eq!(rows, vec![vec![Some("b".to_string())]]);
    assert_eq!(kit::explain_last(&larder.client).await.0, "cache");
}

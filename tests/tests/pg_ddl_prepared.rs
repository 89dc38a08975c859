//! A prepared statement whose result shape changes under it (issue #13): Postgres refuses to
//! run it again ("cached plan must not change result type", SQLSTATE 0A000); a cache rebuilt
//! for the new shape must not answer it with rows of another shape than the client was told.

use std::time::{Duration, Instant};

#[path = "common/kit.rs"]
mod kit;

use kit::{Conn, Deployment};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_select_star_after_add_column_is_refused_like_postgres() {
    let d = Deployment::start(
        "ddl_prepared",
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a'), (2, 'b');",
    );
    let larder = Conn::new(&d.larder_url()).await;
    let direct = Conn::new(&d.direct_url()).await;
    kit::wait_online(&larder.client).await;
    larder
        .client
        .simple_query("CREATE CACHE FROM SELECT * FROM items WHERE id = $1")
        .await
        .expect("CREATE CACHE");
    let through = larder
        .client
        .prepare("SELECT * FROM items WHERE id = $1")
        .await
        .unwrap();
    let straight = direct
        .client
        .prepare("SELECT * FROM items WHERE id = $1")
        .await
        .unwrap();
    let rows = larder.client.query(&through, &[&1i32]).await.unwrap();
    assert_eq!(rows[0].len(), 2);
    assert_eq!(kit::explain_last(&larder.client).await.0, "cache");

    direct
        .client
        .batch_execute("ALTER TABLE items ADD COLUMN extra int DEFAULT 7")
        .await
        .unwrap();
    kit::wait_consistent(&direct.client, &larder.client).await;
    let direct_err = direct
        .client
        .query(&straight, &[&1i32])
        .await
        .expect_err("Postgres ran a prepared statement whose result type changed");
    let direct_code = direct_err
        .as_db_error()
        .map(|e| e.code().code().to_string());
    // Through Larder, the same statement (whatever serves it) gives the same answer as
    // Postgres, also once the cache is rebuilt for the new shape.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = larder.client.query(&through, &[&1i32]).await;
        let code = got
            .as_ref()
            .err()
            .and_then(|e| e.as_db_error().map(|e| e.code().code().to_string()));
        assert_eq!(code, direct_code, "through Larder: {got:?}");
        let fresh = kit::text_rows(&larder.client, "SELECT * FROM items WHERE id = 1").await;
        if kit::explain_last(&larder.client).await.0 == "cache" {
            assert_eq!(fresh[0].len(), 3, "{fresh:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the cache was not rebuilt");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = larder.client.query(&through, &[&1i32]).await;
    let code = got
        .as_ref()
        .err()
        .and_then(|e| e.as_db_error().map(|e| e.code().code().to_string()));
    assert_eq!(
        code, direct_code,
        "through Larder after the rebuild: {got:?}"
    );
}

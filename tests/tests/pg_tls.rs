//! End-to-end: TLS between clients and Larder, with the cache router in the path.
//!
//! Why: a client that verifies the server (`sslmode=verify-full`) must be able to use Larder as
//! its database, and cached answers must travel over that TLS channel exactly like proxied
//! ones. The test makes its own CA and a certificate for `localhost` with `openssl`, starts the
//! real `larder` binary with `--tls-cert/--tls-key` in caching mode, connects with psql, creates
//! a cache and checks a cache hit (`EXPLAIN LAST STATEMENT`) whose rows equal the direct ones.
//! A second test puts TLS on the upstream hop too (Postgres with `ssl = on`, Larder with
//! `sslmode=require`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use larder_testkit::{psql_url, require_binary, LarderProcess, PgServer};

const WAIT: Duration = Duration::from_secs(60);

struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        let base = std::env::var_os("LARDER_TESTKIT_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!("larder-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a scratch dir");
        ScratchDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(require_binary("openssl"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `<prefix>-ca.pem` (a CA) and `<prefix>-server.pem`/`<prefix>-server.key`: a certificate
/// for `localhost` and 127.0.0.1 signed by it. Returns the three paths.
fn make_pki(dir: &Path, prefix: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = format!("{prefix}-ca.key");
    let ca = format!("{prefix}-ca.pem");
    let key = format!("{prefix}-server.key");
    let csr = format!("{prefix}-server.csr");
    let cert = format!("{prefix}-server.pem");
    let ext = format!("{prefix}-ext.cnf");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
    args.extend_from_slice(&ec);
    args.extend_from_slice(&[
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-subj",
        "/CN=Larder test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args);
    let mut args = vec!["req", "-new", "-nodes"];
    args.extend_from_slice(&ec);
    args.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    openssl(dir, &args);
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n\
         basicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &cert,
            "-extfile",
            &ext,
        ],
    );
    (dir.join(ca), dir.join(cert), dir.join(key))
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> anyhow::Result<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A client URL to Larder that verifies its certificate against `ca` for the name localhost.
fn verify_full_url(
    pg: &PgServer,
    larder: &LarderProcess,
    db: &str,
    ca: &Path,
    extra: &str,
) -> String {
    format!(
        "postgresql://{}:{}@localhost:{}/{db}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}{extra}",
        pg.admin_user(),
        pg.admin_password(),
        larder.port(),
        ca.display()
    )
}

const QUERY: &str = "SELECT id, name, price, tags FROM items WHERE category = 'c3' ORDER BY id";

fn prepare_items(pg: &PgServer, db: &str) {
    pg.psql(
        db,
        "CREATE TABLE items (id int PRIMARY KEY, category text NOT NULL, name text,
                             price numeric(10,2), tags text[]);
         INSERT INTO items
           SELECT g, 'c' || (g % 7), 'item ' || g, g * 1.25, ARRAY['t' || g, 'x']
           FROM generate_series(1, 200) g;",
    )
    .unwrap();
}

/// Over `url`: the connection is TLS, a cache is created, and `QUERY` is answered by it with
/// the same rows as the direct answer.
fn check_cache_hit_over_tls(pg: &PgServer, db: &str, url: &str) {
    let conninfo = psql_url(url, "\\conninfo").unwrap();
    assert!(
        conninfo.contains("SSL connection"),
        "the client connection is not TLS: {conninfo}"
    );
    eventually("creating the cache", || {
        psql_url(
            url,
            "CREATE CACHE FROM SELECT id, name, price, tags FROM items WHERE category = $1 ORDER BY id",
        )
    });
    let direct = pg.psql(db, QUERY).unwrap();
    assert!(direct.lines().count() > 20, "{direct}");
    let through = eventually("a cache hit over TLS", || {
        let out = psql_url(url, &format!("{QUERY};\n{QUERY};\nEXPLAIN LAST STATEMENT;"))?;
        let lines: Vec<&str> = out.lines().collect();
        let (last, rows) = lines.split_last().unwrap();
        anyhow::ensure!(last.starts_with("cache|"), "not from the cache: {last}");
        // The second run of the query (the one EXPLAIN describes).
        Ok(rows[rows.len() / 2..].join("\n") + "\n")
    });
    assert_eq!(
        through, direct,
        "a cache hit over TLS differs from the direct answer"
    );
}

#[test]
fn verify_full_client_gets_cache_hits_over_tls() {
    let pg = PgServer::shared();
    let db = pg.create_database("tls").unwrap();
    prepare_items(pg, &db);
    let dir = ScratchDir::new("one-hop");
    let (ca, cert, key) = make_pki(dir.path(), "larder");
    let (other_ca, _, _) = make_pki(dir.path(), "other");
    let url = pg.url(&db);
    let storage = dir.path().join("storage").display().to_string();
    let larder = LarderProcess::spawn(
        &[
            "--upstream-db-url",
            &url,
            "--storage-dir",
            &storage,
            "--deployment",
            &db,
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
        &[],
    )
    .unwrap();
    // psql's default channel_binding=prefer: the plain upstream offers no -PLUS mechanism.
    check_cache_hit_over_tls(pg, &db, &verify_full_url(pg, &larder, &db, &ca, ""));

    // The client really verifies: a certificate from another CA is refused.
    let err = psql_url(
        &verify_full_url(pg, &larder, &db, &other_ca, ""),
        "SELECT 1",
    )
    .expect_err("a certificate from an unknown CA must be refused");
    assert!(
        err.to_string().contains("certificate verify failed"),
        "{err:#}"
    );
}

/// Turns TLS on in `pg` with a certificate for localhost signed by a private CA.
fn enable_upstream_tls(pg: &PgServer, dir: &Path) {
    let (_, cert, key) = make_pki(dir, "upstream");
    // Postgres reads the files as its own OS user and wants the key private to it.
    let owner = std::fs::metadata(pg.data_dir()).unwrap();
    let mut paths = Vec::new();
    for (src, name) in [(&cert, "server.crt"), (&key, "server.key")] {
        let dst = pg.data_dir().join(name);
        std::fs::copy(src, &dst).unwrap();
        std::os::unix::fs::chown(&dst, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).unwrap();
        paths.push(dst);
    }
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET ssl = on; SELECT pg_reload_conf();",
    )
    .unwrap();
    eventually("TLS on the upstream", || {
        let out = psql_url(
            &format!("{}?sslmode=require", pg.url("postgres")),
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )?;
        anyhow::ensure!(out.trim() == "t", "{out}");
        Ok(())
    });
}

#[test]
fn tls_on_both_hops_serves_cache_hits() {
    let pg = PgServer::start().unwrap();
    let db = pg.create_database("tls2").unwrap();
    prepare_items(&pg, &db);
    let dir = ScratchDir::new("two-hops");
    enable_upstream_tls(&pg, dir.path());
    let (ca, cert, key) = make_pki(dir.path(), "larder");
    let url = format!("{}?sslmode=require", pg.url(&db));
    let storage = dir.path().join("storage").display().to_string();
    let larder = LarderProcess::spawn(
        &[
            "--upstream-db-url",
            &url,
            "--storage-dir",
            &storage,
            "--deployment",
            &db,
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
        &[],
    )
    .unwrap();
    // SCRAM channel binding cannot cross a proxy (each TLS hop has its own certificate), so a
    // client that announces it is refused by a TLS upstream; with it disabled, everything works.
    let url = verify_full_url(&pg, &larder, &db, &ca, "&channel_binding=disable");
    check_cache_hit_over_tls(&pg, &db, &url);
    let err = psql_url(&verify_full_url(&pg, &larder, &db, &ca, ""), "SELECT 1")
        .expect_err("libpq announces channel binding over TLS; a TLS upstream refuses that");
    assert!(err.to_string().contains("channel binding"), "{err:#}");
    assert!(
        larder.log().contains("channel_binding=disable"),
        "Larder must explain the refusal: {}",
        larder.log()
    );
    // Larder's own upstream sessions use TLS as well.
    let upstream_ssl = pg
        .psql(
            &db,
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s
             JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name <> 'psql' AND a.backend_type IN ('client backend', 'walsender')
               AND a.pid <> pg_backend_pid()",
        )
        .unwrap();
    let (tls, all) = upstream_ssl.trim().split_once('|').unwrap();
    assert!(
        all != "0" && tls == all,
        "Larder's upstream sessions: {upstream_ssl}"
    );
}

//! A MariaDB database, a schema, and a Larder replicating it, for the MySQL cache tests
//! (included with `#[path]` next to `my_kit.rs`).

#![allow(dead_code)]

use std::time::Duration;

use larder_testkit::{LarderProcess, MariaDbServer};

use super::my_kit::{assert_ok, cli, python, require_python_module};

pub struct Setup {
    pub maria: &'static MariaDbServer,
    pub db: String,
    pub larder: LarderProcess,
    pub storage: std::path::PathBuf,
    pub server_id: String,
}

impl Setup {
    pub fn new(prefix: &str, schema: &str) -> Setup {
        Setup::with(prefix, schema, &[])
    }

    /// [`Setup::new`] with more flags for Larder.
    pub fn with(prefix: &str, schema: &str, extra: &[&str]) -> Setup {
        require_python_module("pymysql", "PyMySQL");
        require_python_module("mysql.connector", "mysql-connector-python");
        let maria = MariaDbServer::shared();
        let db = maria.create_database(prefix).expect("creating a database");
        maria.query(&db, schema).expect("schema");
        let storage =
            std::env::temp_dir().join(format!("larder-mycache-{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&storage);
        let server_id = super::my_kit::server_id(prefix).to_string();
        let url = maria.url(&db);
        let storage_arg = storage.display().to_string();
        let mut all = args(&url, &storage_arg, &server_id);
        all.extend_from_slice(extra);
        let larder = LarderProcess::spawn(&all, &[]).expect("starting larder");
        Setup {
            maria,
            db,
            larder,
            storage,
            server_id,
        }
    }

    pub fn restart_after_kill9(&mut self) {
        self.larder.kill9();
        let port = self.larder.port();
        let url = self.maria.url(&self.db);
        let storage = self.storage.display().to_string();
        let args = args(&url, &storage, &self.server_id);
        self.larder = LarderProcess::spawn_on_port(port, &args, &[]).expect("restarting larder");
    }

    /// The CLI through Larder as the admin.
    pub fn cli(&self, sql: &str) -> String {
        assert_ok(&cli(
            self.larder.port(),
            self.maria.admin_user(),
            self.maria.admin_password(),
            &self.db,
            sql,
            &[],
        ))
    }

    /// A Python script (see `my_kit::python`) through Larder; `DIRECT_PORT` is the server's.
    pub fn python(&self, script: &str) -> String {
        let prelude = format!(
            "DIRECT_PORT = {}\nimport mysql.connector, random, decimal\n\
             def prepared(port=None, **kw):\n\
             \x20   args = dict(host=HOST, port=port or PORT, user=USER, password=PASSWORD,\n\
             \x20               database=DB, autocommit=True)\n\
             \x20   args.update(kw)\n\
             \x20   return mysql.connector.connect(**args)\n\
             def where(cur):\n\
             \x20   cur.execute('EXPLAIN LAST STATEMENT')\n\
             \x20   return cur.fetchall()[0]\n\
             RAW = {{k: v for k, v in pymysql.converters.conversions.items() if not isinstance(k, int)}}\n\
             def side_by_side():\n\
             \x20   # Through Larder and direct: text cursors (values as the server's text), prepared\n\
             \x20   # cursors, and a text cursor beside the prepared one (EXPLAIN LAST STATEMENT).\n\
             \x20   conns = [connect(autocommit=True, conv=RAW), connect(autocommit=True, conv=RAW, port=DIRECT_PORT),\n\
             \x20            prepared(), prepared(port=DIRECT_PORT)]\n\
             \x20   return (conns, conns[0].cursor(), conns[1].cursor(), conns[2].cursor(prepared=True),\n\
             \x20           conns[3].cursor(prepared=True), conns[2].cursor())\n",
            self.maria.port()
        );
        assert_ok(&python(
            self.larder.port(),
            self.maria.admin_user(),
            self.maria.admin_password(),
            &self.db,
            &format!("{prelude}{script}"),
        ))
    }
}

pub fn args<'a>(url: &'a str, storage: &'a str, server_id: &'a str) -> Vec<&'a str> {
    vec![
        "--upstream-db-url",
        url,
        "--storage-dir",
        storage,
        "--replication-server-id",
        server_id,
    ]
}

pub fn spawn(
    maria: &MariaDbServer,
    db: &str,
    storage: &std::path::Path,
    server_id: &str,
) -> LarderProcess {
    let url = maria.url(db);
    let storage = storage.display().to_string();
    LarderProcess::spawn(&args(&url, &storage, server_id), &[]).expect("starting larder")
}

/// Until the cache answers `sql` (replication caught up, the cache filled).
pub fn until_served(s: &Setup, sql: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = s.cli(&format!("{sql}; EXPLAIN LAST STATEMENT"));
        if out.lines().last().is_some_and(|l| l.starts_with("larder")) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never served: {out}\n{}",
            s.larder.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Until replication serves (any cache would).
pub fn until_served_any(s: &Setup) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !s.larder.log().contains("caches serve") {
        assert!(std::time::Instant::now() < deadline, "{}", s.larder.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! End-to-end: Larder as a transparent MySQL/MariaDB relay.
//!
//! Why: every client must be able to use Larder as its database: logging in with its own
//! credentials (Larder knows no passwords and relays the auth exchange), every command and
//! response shape (multi-statements, prepared statements, LOAD DATA LOCAL, large results,
//! KILL with Larder's connection ids), TLS between client and Larder, Larder's own
//! statements answered with MySQL error codes, and failures (a malformed
//! packet, a dead upstream) ending only the session concerned. Every test runs real clients
//! (the `mariadb` CLI, PyMySQL, mysql-connector-python) against a real MariaDB through the real
//! `larder` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use larder_testkit::{require_binary, LarderProcess, MariaDbServer};

#[path = "common/my_kit.rs"]
mod my_kit;
use my_kit::{assert_ok, cli, python, require_python_module, stderr};

/// A database on the shared MariaDB and a Larder in front of it.
struct Setup {
    maria: &'static MariaDbServer,
    db: String,
    larder: LarderProcess,
}

impl Setup {
    fn new(prefix: &str, extra: &[&str]) -> Setup {
        let maria = MariaDbServer::shared();
        let db = maria.create_database(prefix).expect("creating a database");
        let url = maria.url(&db);
        // Each Larder replicates as its own replica of the shared server.
        let server_id = my_kit::server_id(prefix).to_string();
        let mut args = vec![
            "--upstream-db-url",
            url.as_str(),
            "--replication-server-id",
            server_id.as_str(),
        ];
        args.extend_from_slice(extra);
        let larder = LarderProcess::spawn(&args, &[]).expect("starting larder");
        Setup { maria, db, larder }
    }

    /// The `mariadb` CLI through Larder as root.
    fn cli(&self, sql: &str) -> Output {
        cli(
            self.larder.port(),
            self.maria.admin_user(),
            self.maria.admin_password(),
            &self.db,
            sql,
            &[],
        )
    }

    /// A Python script through Larder as root (see [`python`]).
    fn python(&self, script: &str) -> Output {
        python(
            self.larder.port(),
            self.maria.admin_user(),
            self.maria.admin_password(),
            &self.db,
            script,
        )
    }
}

#[test]
fn cli_runs_queries_and_multi_statements() {
    let s = Setup::new("my_cli", &[]);
    let out = assert_ok(&s.cli("select 1; select 2"));
    assert_eq!(out, "1\n2\n");
    let out = assert_ok(&s.cli(
        "create table t (id int primary key, v varchar(20)); \
         insert into t values (1, 'a'), (2, NULL); \
         select id, coalesce(v, 'null') from t order by id; \
         prepare st from 'select v from t where id = ?'; set @x = 1; execute st using @x; \
         deallocate prepare st",
    ));
    assert_eq!(out, "1\ta\n2\tnull\na\n");
    // The database named at login is the current one; COM_INIT_DB (`use`) changes it.
    let out = assert_ok(&s.cli("select database(); use mysql; select database()"));
    assert_eq!(out, format!("{}\nmysql\n", s.db));
}

#[test]
fn wrong_password_gets_the_servers_error() {
    let s = Setup::new("my_auth_fail", &[]);
    let o = cli(
        s.larder.port(),
        "root",
        "not-the-password",
        &s.db,
        "select 1",
        &[],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("ERROR 1045") && err.contains("Access denied for user 'root'"),
        "{err}"
    );
    // Larder keeps serving.
    assert_eq!(assert_ok(&s.cli("select 3")), "3\n");
}

#[test]
fn auth_plugins_and_auth_switch_are_relayed() {
    let s = Setup::new("my_auth", &[]);
    let user = format!("native_{}", std::process::id());
    s.maria
        .query(
            "",
            &format!(
                "CREATE USER '{user}'@'%' IDENTIFIED VIA mysql_native_password \
                 USING PASSWORD('n4tive'); GRANT ALL ON `{}`.* TO '{user}'@'%'",
                s.db
            ),
        )
        .unwrap();
    let port = s.larder.port();
    assert_eq!(
        assert_ok(&cli(
            port,
            &user,
            "n4tive",
            &s.db,
            "select current_user()",
            &[]
        )),
        format!("{user}@%\n")
    );
    // A client whose default plugin differs: the server answers with an auth switch request,
    // which Larder relays like any other auth packet.
    assert_eq!(
        assert_ok(&cli(
            port,
            &user,
            "n4tive",
            &s.db,
            "select 5",
            &["--default-auth=mysql_clear_password"]
        )),
        "5\n"
    );
    let o = cli(port, &user, "wrong", &s.db, "select 1", &[]);
    assert!(stderr(&o).contains("ERROR 1045"), "{}", stderr(&o));

    // ed25519, when the server has the plugin: always an auth switch (it is not the default).
    if s.maria.query("", "INSTALL SONAME 'auth_ed25519'").is_ok()
        || s.maria
            .query(
                "",
                "SELECT 1 FROM information_schema.plugins WHERE plugin_name = 'ed25519'",
            )
            .is_ok_and(|o| o.trim() == "1")
    {
        let ed = format!("ed_{}", std::process::id());
        s.maria
            .query(
                "",
                &format!(
                    "CREATE USER '{ed}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('edpw'); \
                     GRANT ALL ON `{}`.* TO '{ed}'@'%'",
                    s.db
                ),
            )
            .unwrap();
        assert_eq!(
            assert_ok(&cli(port, &ed, "edpw", &s.db, "select 6", &[])),
            "6\n"
        );
        let o = cli(port, &ed, "nope", &s.db, "select 1", &[]);
        assert!(stderr(&o).contains("ERROR 1045"), "{}", stderr(&o));
    } else {
        eprintln!("auth_ed25519 is not available on this MariaDB; ed25519 not tested");
    }
}

#[test]
fn larder_statements_get_mysql_error_codes() {
    let s = Setup::new("my_larder_stmt", &[]);
    for (sql, code) in [
        // Nothing to cache: ER_NOT_SUPPORTED_YET, with the reason.
        ("CREATE CACHE FROM SELECT 1", "ERROR 1235 (42000)"),
        // A table the upstream does not have: the upstream's own error.
        (
            "CREATE CACHE FROM SELECT * FROM nosuch",
            "ERROR 1146 (42S02)",
        ),
        ("CREATE CACHE FROM SELEC", "ERROR 1064 (42000)"),
        ("DROP CACHE q_0000000000000000", "ERROR 1105 (HY000)"),
    ] {
        let o = s.cli(sql);
        assert!(!o.status.success(), "{sql}");
        let err = stderr(&o);
        assert!(err.contains(code), "{sql}: {err}");
    }
    assert_ok(&s.cli("SHOW CACHES"));
    assert_ok(&s.cli("ALTER LARDER SET caching = on"));
    // The session goes on after a local answer.
    let out = assert_ok(&s.python(
        "c = connect(); cur = c.cursor()\n\
         try:\n    cur.execute('CREATE CACHE FROM SELECT 1')\n\
         except pymysql.err.MySQLError as e:\n    print(e.args[0])\n\
         cur.execute('select 7'); print(cur.fetchone()[0])\n",
    ));
    assert_eq!(out, "1235\n7\n");
}

#[test]
fn pymysql_queries_infile_large_results_and_init_db() {
    let s = Setup::new("my_pymysql", &[]);
    // A 17 MB row needs a packet split in two; the server must allow it.
    s.maria
        .query("", "SET GLOBAL max_allowed_packet = 67108864")
        .unwrap();
    let dir = scratch("infile");
    let csv = dir.join("data.csv");
    std::fs::write(
        &csv,
        (0..1000)
            .map(|i| format!("{i},val{i}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let script = format!(
        "c = connect(local_infile=True, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)\n\
         cur = c.cursor()\n\
         cur.execute('create table t (id int primary key, v text)')\n\
         cur.execute(\"LOAD DATA LOCAL INFILE '{csv}' INTO TABLE t FIELDS TERMINATED BY ','\")\n\
         c.commit()\n\
         cur.execute('select count(*), sum(id) from t'); print('infile', *cur.fetchone())\n\
         cur.execute(\"select repeat('x', 1000) from seq_1_to_20000\")\n\
         rows = cur.fetchall(); print('big', len(rows), sum(len(r[0]) for r in rows))\n\
         cur.execute(\"select repeat('y', 17000000), 1\")\n\
         r = cur.fetchone(); print('huge', len(r[0]), r[1])\n\
         cur.execute('select 1; select 2, 3; update t set v = 1 where id = 1; select 4')\n\
         res = [cur.fetchall()]\n\
         while cur.nextset(): res.append(cur.fetchall())\n\
         print('multi', res)\n\
         cur.execute('create procedure p() begin select 1; select 2; end')\n\
         cur.execute('call p()'); res = [cur.fetchall()]\n\
         while cur.nextset(): res.append(cur.fetchall())\n\
         print('call', res)\n\
         c.select_db('mysql'); cur.execute('select database()'); print('db', cur.fetchone()[0])\n\
         c.ping(); print('ping')\n\
         try:\n    cur.execute('select * from no_such_table')\n\
         except pymysql.err.MySQLError as e:\n    print('err', e.args[0])\n\
         cur.execute('select 8'); print(cur.fetchone()[0])\n",
        csv = csv.display()
    );
    let out = assert_ok(&s.python(&script));
    assert_eq!(
        out,
        "infile 1000 499500\n\
         big 20000 20000000\n\
         huge 17000000 1\n\
         multi [((1,),), ((2, 3),), [], ((4,),)]\n\
         call [((1,),), ((2,),), []]\n\
         db mysql\n\
         ping\n\
         err 1146\n\
         8\n"
    );
}

#[test]
fn server_side_prepared_statements_and_session_commands() {
    require_python_module("mysql.connector", "mysql-connector-python");
    let s = Setup::new("my_prepared", &[]);
    let script = "import mysql.connector\n\
        m = mysql.connector.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, database=DB)\n\
        cur = m.cursor()\n\
        cur.execute('create table t (id int primary key, v varchar(10), d double)')\n\
        pc = m.cursor(prepared=True)\n\
        for i in range(5): pc.execute('insert into t values (%s, %s, %s)', (i, 'v%d' % i, i / 2))\n\
        m.commit()\n\
        pc.execute('select id, v, d from t where id < %s order by id', (3,))\n\
        print('prepared', pc.fetchall())\n\
        pc.execute('select ?, ?, null', (1, 'two')); print('params', pc.fetchall())\n\
        try:\n    pc.execute('select * from no_such_table where id = %s', (1,))\n\
        except mysql.connector.Error as e:\n    print('err', e.errno)\n\
        st = m.cmd_statistics(); print('stats', 'Uptime' in st)\n\
        m.cmd_change_user(username=USER, password=PASSWORD, database=DB); print('change user')\n\
        m.cmd_reset_connection(); print('reset')\n\
        cur = m.cursor(); cur.execute('select count(*) from t'); print('count', cur.fetchone()[0])\n";
    let out = assert_ok(&s.python(script));
    assert_eq!(
        out,
        "prepared [(0, 'v0', 0.0), (1, 'v1', 0.5), (2, 'v2', 1.0)]\n\
         params [(1, 'two', None)]\n\
         err 1146\n\
         stats True\n\
         change user\n\
         reset\n\
         count 5\n"
    );
}

/// Speaks the binary protocol by hand over a PyMySQL login (with or without
/// CLIENT_DEPRECATE_EOF): COM_STMT_PREPARE, COM_STMT_EXECUTE with a read-only cursor,
/// COM_STMT_FETCH until the end and past it, COM_STMT_CLOSE, a query and COM_PING; prints the
/// kinds of the packets received.
const CURSOR_TRANSCRIPT: &str = r#"
import os, pymysql, struct, sys
def run(port, deprecate):
    flag = (1 << 24) if deprecate else 0
    c = pymysql.connect(host='127.0.0.1', port=port, user=os.environ['MY_USER'], password=os.environ['MY_PASSWORD'], database=os.environ['MY_DB'], client_flag=flag)
    s = c._sock
    def send(payload):
        s.sendall(struct.pack('<I', len(payload))[:3] + b'\x00' + payload)
    def recv():
        hdr = b''
        while len(hdr) < 4: hdr += s.recv(4 - len(hdr))
        n = hdr[0] | hdr[1] << 8 | hdr[2] << 16
        body = b''
        while len(body) < n: body += s.recv(n - len(body))
        return hdr[3], body
    def kind(b):
        if b[0] == 0xff: return 'ERR%d' % struct.unpack('<H', b[1:3])[0]
        if b[0] == 0xfe and len(b) < 9: 
            st = struct.unpack('<H', b[3:5])[0] if len(b) == 5 else None
            return 'EOF' if len(b) == 5 else 'OKEOF'
        if b[0] == 0x00: return 'OK'
        return 'X%d' % len(b)
    out = []
    send(b'\x16select seq from seq_1_to_10')
    seq, ok = recv(); out.append(kind(ok))
    stmt = struct.unpack('<I', ok[1:5])[0]; cols = struct.unpack('<H', ok[5:7])[0]
    for _ in range(cols): out.append(kind(recv()[1]))
    if not deprecate: out.append(kind(recv()[1]))
    send(b'\x17' + struct.pack('<IBI', stmt, 1, 1))
    # column count, defs, then EOF/OK with cursor status
    out.append(kind(recv()[1]))
    for _ in range(cols): out.append(kind(recv()[1]))
    seq, b = recv(); out.append(kind(b)); out.append('cursor=%d' % (struct.unpack('<H', b[-2:] if len(b)==5 else b[3:5])[0] & 0x40 != 0))
    for _ in range(4):
        send(b'\x1c' + struct.pack('<II', stmt, 4))
        while True:
            seq, b = recv(); k = kind(b); out.append(k)
            if k in ('EOF', 'OKEOF') or k.startswith('ERR'): break
    send(b'\x19' + struct.pack('<I', stmt))  # close, no response
    send(b'\x03select 42')
    ends = 0
    while True:
        seq, b = recv(); k = kind(b); out.append(k)
        if k in ('EOF', 'OKEOF'): ends += 1
        if k.startswith('ERR') or ends == (1 if deprecate else 2): break
    send(b'\x0e')  # COM_PING
    out.append(kind(recv()[1]))
    return out
for deprecate in (False, True):
    print(deprecate, run(int(sys.argv[1]), deprecate))"#;

#[test]
fn cursor_fetch_transcripts_match_the_server() {
    let s = Setup::new("my_cursor", &[]);
    let run = |port: u16| {
        let out = Command::new(require_binary("python3"))
            .args(["-c", CURSOR_TRANSCRIPT, &port.to_string()])
            .env("MY_USER", s.maria.admin_user())
            .env("MY_PASSWORD", s.maria.admin_password())
            .env("MY_DB", &s.db)
            .output()
            .unwrap();
        assert_ok(&out)
    };
    let direct = run(s.maria.port());
    assert!(direct.contains("cursor=1"), "{direct}");
    assert_eq!(run(s.larder.port()), direct);
}

#[test]
fn kill_query_uses_larders_connection_ids() {
    let s = Setup::new("my_kill", &[]);
    let out = assert_ok(&s.python(
        "victim = connect(); vid = victim.thread_id()\n\
         cur = victim.cursor(); cur.execute('select connection_id()')\n\
         upstream_id = cur.fetchone()[0]\n\
         print('ids differ', vid != upstream_id)\n\
         def killer():\n\
         \x20   time.sleep(1)\n\
         \x20   k = connect(); k.cursor().execute('KILL QUERY %d' % vid)\n\
         threading.Thread(target=killer).start()\n\
         t0 = time.time()\n\
         try:\n    cur.execute('select sleep(30)'); print('result', cur.fetchone()[0])\n\
         except pymysql.err.MySQLError as e:\n    print('interrupted', e.args[0])\n\
         print('fast', time.time() - t0 < 15)\n\
         cur.execute('select 9'); print(cur.fetchone()[0])\n\
         k = connect(); k.cursor().execute('KILL CONNECTION %d' % vid); time.sleep(0.5)\n\
         try:\n    cur.execute('select 1'); print('still connected')\n\
         except pymysql.err.MySQLError as e:\n    print('killed', e.args[0] in (2006, 2013))\n\
         c = connect(); c2 = c.cursor(); c2.execute('select 10'); print(c2.fetchone()[0])\n",
    ));
    // MariaDB reports a killed SLEEP as ER_QUERY_INTERRUPTED; MySQL returns 1.
    assert!(
        out == "ids differ True\ninterrupted 1317\nfast True\n9\nkilled True\n10\n"
            || out == "ids differ True\nresult 1\nfast True\n9\nkilled True\n10\n",
        "{out}"
    );
}

#[test]
fn tls_between_client_and_larder() {
    let dir = scratch("tls");
    let (cert, key) = self_signed_cert(&dir);
    let s = Setup::new(
        "my_tls",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let script = format!(
        "import ssl\n\
         ctx = ssl.create_default_context(cafile='{cert}')\n\
         c = connect(ssl=ctx, host='localhost')\n\
         print('tls', c._sock.version().startswith('TLS'))\n\
         cur = c.cursor(); cur.execute(\"select repeat('z', 100000)\"); print(len(cur.fetchone()[0]))\n\
         try:\n    connect(ssl=ssl.create_default_context(), host='localhost')\n\
         except pymysql.err.MySQLError as e:\n    print('untrusted refused')\n\
         c2 = connect(); cur = c2.cursor(); cur.execute('select 10'); print(cur.fetchone()[0])\n",
        cert = cert.display()
    );
    let out = assert_ok(&s.python(&script));
    assert_eq!(out, "tls True\n100000\nuntrusted refused\n10\n");
    // The CLI too, verifying the certificate.
    let o = cli(
        s.larder.port(),
        s.maria.admin_user(),
        s.maria.admin_password(),
        &s.db,
        "select 11",
        &[
            "--ssl",
            &format!("--ssl-ca={}", cert.display()),
            "--ssl-verify-server-cert",
        ],
    );
    assert_eq!(assert_ok(&o), "11\n");
}

#[test]
fn tls_to_the_upstream() {
    let dir = scratch("uptls");
    let (cert, key) = self_signed_cert(&dir);
    let maria = MariaDbServer::start_with_args(&[
        &format!("--ssl-cert={}", cert.display()),
        &format!("--ssl-key={}", key.display()),
    ])
    .expect("starting MariaDB with TLS");
    let url = format!("{}?ssl-mode=REQUIRED", maria.url("mysql"));
    let (user, pw) = (maria.admin_user(), maria.admin_password());
    // Plain client -> Larder, and TLS client -> Larder: the upstream leg is TLS either way
    // (the two legs then number their handshake packets differently).
    let plain = LarderProcess::spawn(&["--upstream-db-url", &url], &[]).unwrap();
    let tls = LarderProcess::spawn(
        &[
            "--upstream-db-url",
            &url,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    for (larder, extra) in [
        (&plain, vec![]),
        (&tls, vec!["--ssl", "--ssl-verify-server-cert"]),
    ] {
        let ca = format!("--ssl-ca={}", cert.display());
        let mut extra: Vec<&str> = extra;
        if !extra.is_empty() {
            extra.push(&ca);
        }
        let out = assert_ok(&cli(
            larder.port(),
            user,
            pw,
            "mysql",
            "show status like 'Ssl_version'",
            &extra,
        ));
        assert!(out.starts_with("Ssl_version\tTLSv1"), "{out}");
        let o = cli(larder.port(), user, "wrong", "mysql", "select 1", &extra);
        assert!(stderr(&o).contains("ERROR 1045"), "{}", stderr(&o));
    }
    // ssl-mode=REQUIRED against a server without TLS: a clean error, Larder keeps running.
    let shared = MariaDbServer::shared();
    let url = format!("{}?ssl-mode=REQUIRED", shared.url("mysql"));
    let larder = LarderProcess::spawn(&["--upstream-db-url", &url], &[]).unwrap();
    let o = cli(
        larder.port(),
        shared.admin_user(),
        shared.admin_password(),
        "mysql",
        "select 1",
        &["--skip-ssl"],
    );
    assert!(
        stderr(&o).contains("the upstream does not offer TLS but ssl-mode requires it"),
        "{}",
        stderr(&o)
    );
    assert!(larder.is_running());
}

#[test]
fn malformed_packets_end_only_their_session() {
    let s = Setup::new("my_malformed", &["--message-size-max-bytes", "1048576"]);
    let out = assert_ok(&s.python(
        "def read_packet(sock):\n\
         \x20   hdr = b''\n\
         \x20   while len(hdr) < 4: hdr += sock.recv(4 - len(hdr))\n\
         \x20   n = hdr[0] | hdr[1] << 8 | hdr[2] << 16; body = b''\n\
         \x20   while len(body) < n: body += sock.recv(n - len(body))\n\
         \x20   return body\n\
         def expect_error(payload):\n\
         \x20   c = connect(); c._sock.settimeout(5)\n\
         \x20   c._sock.sendall(payload)\n\
         \x20   body = read_packet(c._sock)\n\
         \x20   print(struct.unpack('<H', body[1:3])[0] if body[0] == 0xff else 'no error')\n\
         \x20   print('closed', c._sock.recv(100) == b'')\n\
         # a command packet whose sequence id is not 0\n\
         expect_error(b'\\x05\\x00\\x00\\x07\\x03abcd')\n\
         # a packet larger than --message-size-max-bytes\n\
         expect_error(b'\\x00\\x00\\x20\\x00\\x03' + b'x' * 100)\n\
         # garbage instead of a handshake response\n\
         s = socket.create_connection((HOST, PORT)); s.settimeout(5)\n\
         read_packet(s)\n\
         s.sendall(b'\\x03\\x00\\x00\\x01abc')\n\
         body = read_packet(s); print('handshake', struct.unpack('<H', body[1:3])[0])\n\
         # other sessions still work\n\
         c = connect(); cur = c.cursor(); cur.execute('select 12'); print(cur.fetchone()[0])\n",
    ));
    assert_eq!(
        out,
        "1156\nclosed True\n1153\nclosed True\nhandshake 1043\n12\n"
    );
    assert!(s.larder.is_running());
}

#[test]
fn too_many_connections_get_1040() {
    let s = Setup::new("my_max_conn", &["--max-connections", "1"]);
    let out = assert_ok(&s.python(
        "a = connect()\n\
         try:\n    connect(); print('second connected')\n\
         except pymysql.err.MySQLError as e:\n    print(e.args[0], e.args[1])\n\
         a.close(); time.sleep(0.5)\n\
         b = connect(); cur = b.cursor(); cur.execute('select 13'); print(cur.fetchone()[0])\n",
    ));
    assert_eq!(out, "1040 Too many connections\n13\n");
}

#[test]
fn a_dead_upstream_gets_a_clean_error() {
    let maria = MariaDbServer::start().expect("starting MariaDB");
    let url = maria.url("mysql");
    let larder = LarderProcess::spawn(&["--upstream-db-url", &url], &[]).unwrap();
    let port = larder.port();
    let (user, pw) = (maria.admin_user(), maria.admin_password());
    let before = assert_ok(&cli(port, user, pw, "mysql", "select 14", &[]));
    assert_eq!(before, "14\n");
    // One session idle, one in the middle of a query when the upstream dies (SIGKILL).
    let script = "import threading\n\
        c = connect(); cur = c.cursor(); cur.execute('select 15'); print(cur.fetchone()[0])\n\
        busy = connect(); out = []\n\
        def run():\n\
        \x20   try:\n\
        \x20       b = busy.cursor(); b.execute('select sleep(30)'); out.append('busy finished')\n\
        \x20   except pymysql.err.MySQLError as e:\n\
        \x20       out.append('busy error %d %s' % (e.args[0], 'Larder: lost connection to the upstream' in str(e.args[1])))\n\
        t = threading.Thread(target=run); t.start(); time.sleep(0.5)\n\
        sys.stdout.flush()\n\
        open(os.environ['MY_FLAG'], 'w').close()\n\
        while os.path.exists(os.environ['MY_FLAG']): time.sleep(0.1)\n\
        t.join(); print(out[0])\n\
        try:\n    cur.execute('select 16'); print('still works')\n\
        except pymysql.err.MySQLError as e:\n    print('idle error', e.args[0] in (2006, 2013))\n";
    let dir = scratch("deadup");
    let flag = dir.join("flag");
    let prelude_port = port;
    let child = Command::new(require_binary("python3"))
        .args([
            "-c",
            &format!(
                "import os, sys, time\nimport pymysql\nHOST='127.0.0.1'; PORT={prelude_port}\n\
                 USER='{user}'; PASSWORD='{pw}'; DB='mysql'\n\
                 def connect(**kw):\n    return pymysql.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, database=DB, **kw)\n\
                 {script}"
            ),
        ])
        .env("MY_FLAG", &flag)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !flag.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the client did not connect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = maria.pid().expect("mariadbd pid") as i32;
    // SAFETY: kill(2) on the pid of the server this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::fs::remove_file(&flag).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = assert_ok(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("15"));
    // The busy session gets Larder's error; the idle one finds its connection closed, as it
    // would have directly.
    assert_eq!(lines.next(), Some("busy error 2013 True"), "{text}");
    assert_eq!(lines.next(), Some("idle error True"), "{text}");
    // New sessions are told the upstream is unreachable; Larder keeps running.
    let o = cli(port, user, pw, "mysql", "select 1", &[]);
    let err = stderr(&o);
    assert!(
        // (The CLI may wrap it: "Received error packet before completion of TLS handshake".)
        err.contains("1105") && err.contains("Larder: cannot reach the upstream database"),
        "{err}"
    );
    assert!(larder.is_running());
}

#[test]
fn metrics_and_graceful_shutdown() {
    let metrics_port = larder_testkit::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let s = Setup::new("my_shutdown", &["--metrics-address", &metrics]);
    let script = format!(
        "import urllib.request, signal\n\
         def get(path):\n\
         \x20   try:\n\
         \x20       r = urllib.request.urlopen('http://{metrics}' + path, timeout=10)\n\
         \x20       return r.status, r.read().decode()\n\
         \x20   except urllib.error.HTTPError as e:\n\
         \x20       return e.code, e.read().decode()\n\
         idle = connect()\n\
         cur = idle.cursor()\n\
         for i in range(3): cur.execute('select %d' % i)\n\
         deadline = time.time() + 20\n\
         while get('/ready')[0] != 200 and time.time() < deadline: time.sleep(0.2)\n\
         print('ready', get('/ready')[0])\n\
         body = get('/metrics')[1]\n\
         print('sessions', 'larder_connections{{state=\"session\"}} 1' in body)\n\
         n = [l for l in body.splitlines() if l.startswith('larder_queries_total{{destination=\"upstream\"}}')]\n\
         print('relayed', float(n[0].split()[-1]) >= 3)\n\
         busy = connect(); result = []\n\
         def run():\n\
         \x20   c = busy.cursor(); c.execute('select sleep(2), 17'); result.append(c.fetchone()[1])\n\
         t = threading.Thread(target=run); t.start(); time.sleep(0.5)\n\
         os.kill(int(os.environ['LARDER_PID']), signal.SIGTERM)\n\
         t.join(); print('busy finished', result)\n\
         try:\n    cur.execute('select 1'); print('idle still served')\n\
         except pymysql.err.MySQLError as e:\n    print('idle closed')\n",
    );
    let mut cmd = Command::new(require_binary("python3"));
    let prelude = "import os, sys, time, threading\nimport pymysql\n\
        def connect():\n\
        \x20   return pymysql.connect(host='127.0.0.1', port=int(os.environ['MY_PORT']), \
        user=os.environ['MY_USER'], password=os.environ['MY_PASSWORD'], database=os.environ['MY_DB'])\n";
    cmd.args(["-c", &format!("{prelude}{script}")])
        .env("MY_PORT", s.larder.port().to_string())
        .env("MY_USER", s.maria.admin_user())
        .env("MY_PASSWORD", s.maria.admin_password())
        .env("MY_DB", &s.db)
        .env("LARDER_PID", s.larder.pid().to_string());
    let out = assert_ok(&cmd.output().unwrap());
    assert_eq!(
        out,
        "ready 200\nsessions True\nrelayed True\nbusy finished [17]\nidle closed\n"
    );
    let status = s.larder.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|st| st.success()), "{status:?}");
}

fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("LARDER_TESTKIT_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let p = base.join(format!("larder-my-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("creating a scratch dir");
    p
}

/// A self-signed certificate for `localhost`/127.0.0.1 and its key.
fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new(require_binary("openssl"))
        .args(["req", "-x509", "-nodes", "-days", "2", "-newkey", "ec"])
        .args([
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

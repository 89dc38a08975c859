//! Self-tests of the harness: real servers come up, are usable, restart, and go away.

use std::time::Duration;

use larder_testkit::{free_port, require_binary, MariaDbServer, PgServer};

#[test]
fn pg_shared_is_up_and_configured() {
    let pg = PgServer::shared();
    assert_eq!(pg.host(), "127.0.0.1");
    let out = pg
        .psql(
            "postgres",
            "SELECT current_user, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user;\n\
             SHOW wal_level; SHOW max_replication_slots; SHOW max_connections; SHOW TimeZone; SHOW fsync;",
        )
        .unwrap();
    assert_eq!(out, "larder_admin|t|t\nlogical\n20\n300\nUTC\noff\n");
    assert!(pg.url("postgres").starts_with(&format!(
        "postgresql://larder_admin:{}@127.0.0.1:{}/postgres",
        pg.admin_password(),
        pg.port()
    )));
    assert!(pg.data_dir().join("PG_VERSION").exists());
    // Same server on every call.
    assert_eq!(PgServer::shared().port(), pg.port());
}

#[test]
fn pg_create_database_and_errors() {
    let pg = PgServer::shared();
    let a = pg.create_database("harness").unwrap();
    let b = pg.create_database("harness").unwrap();
    assert_ne!(a, b);
    pg.psql(
        &a,
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t VALUES (1, 'x'), (2, 'y');",
    )
    .unwrap();
    assert_eq!(pg.psql(&a, "SELECT count(*) FROM t").unwrap(), "2\n");
    // Databases are isolated.
    assert!(pg.psql(&b, "SELECT count(*) FROM t").is_err());
    let err = pg.psql(&a, "SELECT 1/0").unwrap_err().to_string();
    assert!(err.contains("division by zero"), "{err}");
}

#[test]
fn pg_password_auth_is_enforced() {
    let pg = PgServer::shared();
    let url = format!(
        "postgresql://larder_admin:wrong@127.0.0.1:{}/postgres",
        pg.port()
    );
    let out = std::process::Command::new(require_binary("psql"))
        .args(["-X", "-At", "-d", &url, "-c", "select 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
}

#[test]
fn pg_owned_restart_keeps_port_and_data() {
    let pg = PgServer::start().unwrap();
    let dir = pg.data_dir().to_path_buf();
    let db = pg.create_database("restart").unwrap();
    pg.psql(&db, "CREATE TABLE t(x int); INSERT INTO t VALUES (42);")
        .unwrap();
    let port = pg.port();
    let pid_before = pg.pid().unwrap();
    pg.stop().unwrap();
    assert!(pg.psql(&db, "SELECT 1").is_err(), "server should be down");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    pg.start_again().unwrap();
    assert_eq!(pg.port(), port);
    assert_ne!(pg.pid().unwrap(), pid_before);
    assert_eq!(pg.psql(&db, "SELECT x FROM t").unwrap(), "42\n");
    drop(pg);
    assert!(!dir.exists(), "data dir removed on drop");
    // SAFETY: kill(pid, 0) only checks existence.
    let alive = unsafe { libc::kill(pid_before as i32, 0) } == 0;
    assert!(!alive);
}

#[test]
fn pg_logical_replication_slot_works() {
    let pg = PgServer::shared();
    let db = pg.create_database("slot").unwrap();
    let slot = format!("s_{db}");
    let out = pg
        .psql(
            &db,
            &format!(
                "CREATE TABLE t(x int);\n\
                 SELECT 1 FROM pg_create_logical_replication_slot('{slot}', 'test_decoding');\n\
                 INSERT INTO t VALUES (7);\n\
                 SELECT count(*) > 0 FROM pg_logical_slot_get_changes('{slot}', NULL, NULL);\n\
                 SELECT pg_drop_replication_slot('{slot}');"
            ),
        )
        .unwrap();
    assert_eq!(out, "1\nt\n\n");
}

#[test]
fn mariadb_shared_is_up_with_row_binlog() {
    let my = MariaDbServer::shared();
    let out = my
        .query(
            "",
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@server_id",
        )
        .unwrap();
    assert_eq!(out, "1\tROW\tFULL\t1\n");
    let db = my.create_database("harness").unwrap();
    my.query(
        &db,
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10)); INSERT INTO t VALUES (1,'a'),(2,'b');",
    )
    .unwrap();
    assert_eq!(my.query(&db, "SELECT COUNT(*) FROM t").unwrap(), "2\n");
    assert!(my.url(&db).starts_with("mysql://root:"));
    let err = my.query(&db, "SELECT * FROM nope").unwrap_err().to_string();
    assert!(err.contains("doesn't exist"), "{err}");
}

#[test]
fn mariadb_owned_restart() {
    let my = MariaDbServer::start().unwrap();
    let db = my.create_database("restart").unwrap();
    my.query(&db, "CREATE TABLE t (x INT); INSERT INTO t VALUES (5);")
        .unwrap();
    let port = my.port();
    my.stop().unwrap();
    assert!(my.query(&db, "SELECT 1").is_err());
    my.start_again().unwrap();
    assert_eq!(my.port(), port);
    assert_eq!(my.query(&db, "SELECT x FROM t").unwrap(), "5\n");
}

#[test]
fn free_ports_are_distinct() {
    let ports: std::collections::HashSet<u16> = (0..50).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 50);
}

#[test]
#[should_panic(expected = "apt-get install")]
fn missing_binary_panics_with_install_hint() {
    require_binary("definitely-not-a-real-binary-xyz");
}

/// Parent pid and state of a process, from /proc (None when it no longer exists).
fn proc_stat(pid: i32) -> Option<(i32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let mut it = after.split(' ');
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// All live descendants of `root`.
fn descendants(root: i32) -> Vec<i32> {
    let all: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?.0)))
        .collect();
    let mut out = vec![];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &all {
            if ppid == p {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

/// Servers started by a test process that gets SIGKILLed must die with it (PDEATHSIG), and the
/// next test process sweeps their directories.
#[test]
fn servers_die_with_a_sigkilled_test_process() {
    if std::env::var_os("TESTKIT_CHILD").is_some() {
        let pg = PgServer::shared();
        let my = MariaDbServer::shared();
        println!("PIDS {} {}", pg.pid().unwrap(), my.pid().unwrap());
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    use std::io::{BufRead, BufReader};
    // Become the reaper of the orphans we are about to create, so they do not linger as zombies
    // (PID 1 of a container does not always reap).
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "servers_die_with_a_sigkilled_test_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TESTKIT_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child_pid = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    let mut pids = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(at) = line.find("PIDS ") {
            let v: Vec<i32> = line[at + 5..]
                .split(' ')
                .map(|p| p.parse().unwrap())
                .collect();
            pids = Some(v);
            break;
        }
    }
    let servers = pids.expect("child printed its server pids");
    for &p in &servers {
        assert!(proc_stat(p).is_some(), "server {p} runs");
    }
    let all = descendants(child_pid);
    assert!(servers.iter().all(|p| all.contains(p)));
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for &p in &all {
        loop {
            // Reap it if it was reparented to us; otherwise wait until it is gone.
            let mut status = 0;
            // SAFETY: waitpid on a specific pid.
            let r = unsafe { libc::waitpid(p, &mut status, libc::WNOHANG) };
            if r == p || proc_stat(p).is_none() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process {p} ({:?}) survived its SIGKILLed test process",
                proc_stat(p)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The killed process's dirs are left behind; remove them as the next run's sweep would.
    for e in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("larder-testkit-{child_pid}-")) {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
}

/// The process wrapper, exercised with a tiny stand-in listener (the real binary is covered by
/// the pg_proxy_* suites): readiness wait, log capture, SIGTERM and SIGKILL, exit statuses.
#[test]
fn larder_process_wrapper_spawns_waits_logs_and_signals() {
    use std::os::unix::process::ExitStatusExt;
    let dir = std::env::temp_dir().join(format!("larder-testkit-{}-fakebin", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("fake-larder");
    std::fs::write(
        &bin,
        "#!/usr/bin/env python3\n\
         import signal, socket, sys, time\n\
         addr = sys.argv[sys.argv.index('--address') + 1]\n\
         host, port = addr.rsplit(':', 1)\n\
         print('args', sys.argv[1:sys.argv.index('--address')], flush=True)\n\
         print('to stderr', file=sys.stderr, flush=True)\n\
         time.sleep(0.3)  # the wrapper must wait for the listener\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind((host, int(port))); s.listen()\n\
         signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n\
         while True: time.sleep(1)\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    require_binary("python3");
    let p =
        larder_testkit::LarderProcess::spawn_binary(&bin, &["--flag", "x"], &[("A", "1")]).unwrap();
    assert!(std::net::TcpStream::connect(p.address()).is_ok());
    assert!(p.is_running());
    let log = p.log();
    assert!(log.contains("args ['--flag', 'x']"), "{log}");
    assert!(log.contains("to stderr"), "{log}");
    assert!(p.wait_exit(Duration::from_millis(100)).is_none());
    p.sigterm();
    let st = p
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert_eq!(st.code(), Some(0));

    let q = larder_testkit::LarderProcess::spawn_binary(&bin, &[], &[]).unwrap();
    assert_ne!(q.port(), p.port());
    q.kill9();
    let st = q
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGKILL");
    assert_eq!(st.signal(), Some(libc::SIGKILL));

    // A binary that exits at once makes spawn fail with its log.
    let err =
        larder_testkit::LarderProcess::spawn_binary(std::path::Path::new("/bin/false"), &[], &[])
            .err()
            .expect("spawn of an exiting binary must fail");
    assert!(err.to_string().contains("exited during startup"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

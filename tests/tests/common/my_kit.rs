//! Real MySQL clients for the MySQL-mode suites: the `mariadb` CLI and Python scripts
//! (PyMySQL, mysql-connector-python), and their output.
#![allow(dead_code)]

use std::process::{Command, Output, Stdio};

use larder_testkit::require_binary;

pub fn cli(port: u16, user: &str, password: &str, db: &str, sql: &str, extra: &[&str]) -> Output {
    Command::new(require_binary("mariadb"))
        .arg("--no-defaults")
        .args(["--protocol=TCP", "-h", "127.0.0.1", "-N", "-B"])
        .arg(larder_testkit::MARIADB_CONNECT_TIMEOUT_ARG)
        .arg(format!("-P{port}"))
        .arg(format!("-u{user}"))
        .args(extra)
        .arg(db)
        .args(["-e", sql])
        .env("MYSQL_PWD", password)
        .stdin(Stdio::null())
        .output()
        .expect("running the mariadb CLI")
}

/// Runs `script` with python3; it finds `HOST`, `PORT`, `USER`, `PASSWORD`, `DB` and `connect`
/// (a PyMySQL connect with those, taking extra keyword arguments) predefined.
pub fn python(port: u16, user: &str, password: &str, db: &str, script: &str) -> Output {
    let prelude = "import os, sys, time, threading, socket, struct\n\
        import pymysql\n\
        HOST = '127.0.0.1'; PORT = int(os.environ['MY_PORT'])\n\
        USER = os.environ['MY_USER']; PASSWORD = os.environ['MY_PASSWORD']\n\
        DB = os.environ['MY_DB']\n\
        def connect(**kw):\n\
        \x20   args = dict(host=HOST, port=PORT, user=USER, password=PASSWORD, database=DB)\n\
        \x20   args.update(kw)\n\
        \x20   return pymysql.connect(**args)\n";
    let mut cmd = Command::new(require_binary("python3"));
    cmd.args(["-c", &format!("{prelude}{script}")]);
    run_with_endpoint(cmd, port, user, password, db)
}

/// Runs `cmd` with the endpoint in `MY_PORT`, `MY_USER`, `MY_PASSWORD` and `MY_DB`.
fn run_with_endpoint(mut cmd: Command, port: u16, user: &str, password: &str, db: &str) -> Output {
    cmd.env("MY_PORT", port.to_string())
        .env("MY_USER", user)
        .env("MY_PASSWORD", password)
        .env("MY_DB", db)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", cmd.get_program()))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
pub fn assert_ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

pub fn require_python_module(module: &str, package: &str) {
    let ok = Command::new(require_binary("python3"))
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "python module {module} missing: pip install {package} (scripts/lib/deps.sh does)"
    );
}

/// A replica server id of its own for a Larder of this test process (`what` tells them apart).
pub fn server_id(what: &str) -> u32 {
    let hash = what.bytes().fold(std::process::id(), |h, b| {
        h.wrapping_mul(31).wrapping_add(u32::from(b))
    });
    0x1000_0000 | (hash & 0x0fff_ffff)
}

/// The `node_modules` directory scripts/test installs node packages into
/// (`scripts/lib/deps.sh`, `npm_install`), holding `package`.
pub fn require_node_module(package: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let modules = target.join("test-node/node_modules");
    assert!(
        modules.join(package).is_dir(),
        "node package {package} missing in {}: npm install --prefix {} {package} \
         (scripts/lib/deps.sh does)",
        modules.display(),
        target.join("test-node").display()
    );
    modules
}

/// Runs a node script with `modules` on its path (MY_* as for [`python`]).
pub fn node(
    modules: &std::path::Path,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    script: &str,
) -> Output {
    let mut cmd = Command::new(require_binary("node"));
    cmd.args(["-e", script]).env("NODE_PATH", modules);
    run_with_endpoint(cmd, port, user, password, db)
}

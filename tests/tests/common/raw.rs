//! A raw Postgres protocol client for the end-to-end suites that need exact control over the
//! bytes and their timing (pipelines without Sync, Flush, hostile sizes).
//!
//! It logs in as `larder_plain`, which the testkit's pg_hba.conf lets in with a cleartext
//! password over TCP, so no SCRAM is needed. [`plain_role`] creates that role once per server.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

use larder_testkit::PgServer;

pub const PLAIN_USER: &str = "larder_plain";
pub const PLAIN_PASSWORD: &str = "plain_pw";
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates the `larder_plain` role on `pg` (once per process).
pub fn plain_role(pg: &PgServer) {
    static ROLE: OnceLock<()> = OnceLock::new();
    ROLE.get_or_init(|| {
        pg.psql(
            "postgres",
            "DO $$ BEGIN \
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'larder_plain') \
               THEN CREATE ROLE larder_plain LOGIN PASSWORD 'plain_pw'; END IF; END $$;",
        )
        .unwrap_or_else(|e| panic!("creating role: {e:#}"));
    });
}

pub fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub fn startup(user: &str, db: &str) -> Vec<u8> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", db)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&body);
    v
}

pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

pub fn query(sql: &str) -> Vec<u8> {
    tagged(b'Q', &cstr(sql))
}

/// Parse with no declared parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstr(name);
    body.extend_from_slice(&cstr(sql));
    body.extend_from_slice(&0u16.to_be_bytes());
    tagged(b'P', &body)
}

/// Bind of `statement` to the unnamed portal with text parameters and text results.
pub fn bind(statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = cstr("");
    body.extend_from_slice(&cstr(statement));
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0u16.to_be_bytes());
    tagged(b'B', &body)
}

/// Execute of the unnamed portal, all rows.
pub fn execute() -> Vec<u8> {
    let mut body = cstr("");
    body.extend_from_slice(&0u32.to_be_bytes());
    tagged(b'E', &body)
}

/// Bind (no parameters, text results) of `statement` to the unnamed portal, Execute, Sync.
pub fn bind_execute_sync(statement: &str) -> Vec<u8> {
    let mut v = bind(statement, &[]);
    v.extend(execute());
    v.extend(sync());
    v
}

/// Describe of a prepared statement.
pub fn describe_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend_from_slice(&cstr(name));
    tagged(b'D', &body)
}

pub fn sync() -> Vec<u8> {
    tagged(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    tagged(b'H', &[])
}

pub fn read_msg(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// The (SQLSTATE, message) of an ErrorResponse body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        match field.first() {
            Some(b'C') => code = String::from_utf8_lossy(&field[1..]).into_owned(),
            Some(b'M') => message = String::from_utf8_lossy(&field[1..]).into_owned(),
            _ => {}
        }
    }
    (code, message)
}

/// Connects and sends the StartupMessage; returns once the upstream asks for the password.
pub fn connect_until_password(addr: &str, db: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connecting");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.write_all(&startup(PLAIN_USER, db)).unwrap();
    let (tag, body) = read_msg(&mut s).expect("reading the authentication request");
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &3u32.to_be_bytes()[..]),
        "expected a cleartext password request, got {:?}",
        String::from_utf8_lossy(&body)
    );
    s
}

/// A session logged in as `larder_plain`, after its first ReadyForQuery.
pub fn login(addr: &str, db: &str) -> TcpStream {
    let mut s = connect_until_password(addr, db);
    s.write_all(&tagged(b'p', &cstr(PLAIN_PASSWORD))).unwrap();
    loop {
        match read_msg(&mut s).expect("reading the login") {
            (b'Z', _) => return s,
            (b'E', body) => panic!("login failed: {:?}", error_fields(&body)),
            _ => {}
        }
    }
}

/// Reads messages until ReadyForQuery; returns them.
pub fn until_ready(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut seen = Vec::new();
    loop {
        let m = read_msg(s).expect("reading a response");
        let done = m.0 == b'Z';
        seen.push(m);
        if done {
            return seen;
        }
    }
}

/// Reads messages up to and including the first one tagged `tag`.
pub fn read_until(s: &mut TcpStream, tag: u8) -> Vec<(u8, Vec<u8>)> {
    let mut seen = Vec::new();
    loop {
        let m = read_msg(s).expect("reading a response");
        let done = m.0 == tag;
        seen.push(m);
        if done {
            return seen;
        }
    }
}

/// Reads exactly `n` messages.
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<(u8, Vec<u8>)> {
    (0..n)
        .map(|_| read_msg(s).expect("reading a response"))
        .collect()
}

/// A readable summary of responses: the tag, and for errors the SQLSTATE, for data rows the
/// values, for command completions the tag text.
pub fn summary(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .map(|(tag, body)| match tag {
            b'E' => format!("E {}", error_fields(body).0),
            b'C' => format!(
                "C {}",
                String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body))
            ),
            b'D' => {
                let n = u16::from_be_bytes([body[0], body[1]]) as usize;
                let mut pos = 2;
                let mut vals = Vec::new();
                for _ in 0..n {
                    let len = i32::from_be_bytes(body[pos..pos + 4].try_into().unwrap());
                    pos += 4;
                    if len < 0 {
                        vals.push("NULL".to_string());
                    } else {
                        let end = pos + len as usize;
                        vals.push(String::from_utf8_lossy(&body[pos..end]).into_owned());
                        pos = end;
                    }
                }
                format!("D {}", vals.join(","))
            }
            b'Z' => format!("Z {}", body.first().map(|b| *b as char).unwrap_or('?')),
            t => (*t as char).to_string(),
        })
        .collect()
}

//! What mysql_common does not decode: MariaDB's GTID event, the GTID state, event names,
//! and the statement of a QUERY event (transaction control or DDL, and the tables it names).

use std::collections::BTreeMap;
use std::fmt;

/// MariaDB binlog event types mysql_common leaves undecoded.
pub(crate) const MARIADB_ANNOTATE_ROWS: u8 = 160;
pub(crate) const MARIADB_BINLOG_CHECKPOINT: u8 = 161;
pub(crate) const MARIADB_GTID: u8 = 162;
pub(crate) const MARIADB_GTID_LIST: u8 = 163;

/// MariaDB GTID event flag: the transaction has no terminating XID/COMMIT (DDL).
pub(crate) const FL_STANDALONE: u8 = 1;

/// A MariaDB GTID event: starts an event group (a transaction, or one DDL statement).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MariaGtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
    pub flags: u8,
}

impl MariaGtid {
    /// Decodes the event body (after the common header, checksum removed): `seq_no` u64 LE,
    /// `domain_id` u32 LE, `flags2` u8, then optional fields this reader does not need.
    /// `server` is the event header's server id.
    pub fn decode(body: &[u8], server: u32) -> Option<MariaGtid> {
        if body.len() < 13 {
            return None;
        }
        Some(MariaGtid {
            seq: u64::from_le_bytes(body[0..8].try_into().ok()?),
            domain: u32::from_le_bytes(body[8..12].try_into().ok()?),
            flags: body[12],
            server,
        })
    }

    pub fn standalone(&self) -> bool {
        self.flags & FL_STANDALONE != 0
    }
}

/// MariaDB's GTID position: the last GTID of every replication domain
/// (`@@gtid_binlog_pos` text: `domain-server-seq` joined by commas, by domain).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GtidState(BTreeMap<u32, (u32, u64)>);

impl GtidState {
    /// Parses `0-1-17,1-2-3`; `None` on anything else. The empty text is the empty state.
    pub fn parse(text: &str) -> Option<GtidState> {
        let mut map = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.splitn(3, '-');
            let d = it.next()?.parse().ok()?;
            let s = it.next()?.parse().ok()?;
            let n = it.next()?.parse().ok()?;
            map.insert(d, (s, n));
        }
        Some(GtidState(map))
    }

    pub fn apply(&mut self, g: &MariaGtid) {
        self.0.insert(g.domain, (g.server, g.seq));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (d, (s, n))) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}-{s}-{n}")?;
        }
        Ok(())
    }
}

/// A name for an event type, for errors and logs.
pub(crate) fn event_name(raw: u8) -> String {
    let name = match raw {
        2 => "QUERY",
        4 => "ROTATE",
        15 => "FORMAT_DESCRIPTION",
        16 => "XID",
        19 => "TABLE_MAP",
        23 => "WRITE_ROWS_V1",
        24 => "UPDATE_ROWS_V1",
        25 => "DELETE_ROWS_V1",
        27 => "HEARTBEAT",
        30 => "WRITE_ROWS",
        31 => "UPDATE_ROWS",
        32 => "DELETE_ROWS",
        33 => "GTID",
        34 => "ANONYMOUS_GTID",
        35 => "PREVIOUS_GTIDS",
        40 => "TRANSACTION_PAYLOAD",
        MARIADB_ANNOTATE_ROWS => "ANNOTATE_ROWS (MariaDB)",
        MARIADB_BINLOG_CHECKPOINT => "BINLOG_CHECKPOINT (MariaDB)",
        MARIADB_GTID => "GTID (MariaDB)",
        MARIADB_GTID_LIST => "GTID_LIST (MariaDB)",
        _ => "",
    };
    if name.is_empty() {
        format!("type {raw}")
    } else {
        format!("{name} ({raw})")
    }
}

/// A table named by a statement: `(database or None for the default, table)`.
pub(crate) type TableRef = (Option<String>, String);

/// What a QUERY event's statement means to the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Statement {
    Begin,
    Commit,
    Rollback,
    Truncate(TableRef),
    /// The shape of these tables changed or they are gone (ALTER, DROP, RENAME's old
    /// names, CREATE/DROP INDEX).
    Changed(Vec<TableRef>),
    /// These tables may exist now (CREATE, RENAME's new names).
    Created(Vec<TableRef>),
    /// Both (RENAME: old names changed, new names created).
    Renamed {
        from: Vec<TableRef>,
        to: Vec<TableRef>,
    },
    /// A row change logged as a statement (a session with binlog_format STATEMENT or
    /// MIXED): its rows are not in the binlog. The target table when it could be read.
    Dml(Option<TableRef>),
    /// Who may read what changed (GRANT, REVOKE, users and roles, FLUSH PRIVILEGES).
    Access,
    /// Anything else (other DDL, SAVEPOINT, ...): nothing to do.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Quoted(String),
    Punct(char),
}

fn tokenize(sql: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let b: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && b.get(i + 1) == Some(&'*') {
            // `/*!40000 ... */` version comments hold real SQL: keep their content.
            if b.get(i + 2) == Some(&'!') {
                i += 3;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            } else {
                i += 2;
                while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
        } else if c == '*' && b.get(i + 1) == Some(&'/') {
            i += 2;
        } else if c == '#' || (c == '-' && b.get(i + 1) == Some(&'-')) {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '`' {
            let mut s = String::new();
            i += 1;
            while i < b.len() {
                if b[i] == '`' {
                    if b.get(i + 1) == Some(&'`') {
                        s.push('`');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                s.push(b[i]);
                i += 1;
            }
            out.push(Tok::Quoted(s));
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '$') {
                i += 1;
            }
            out.push(Tok::Word(b[start..i].iter().collect()));
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn keyword(&mut self, kw: &str) -> bool {
        match self.toks.get(self.at) {
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw) => {
                self.at += 1;
                true
            }
            _ => false,
        }
    }

    fn keywords(&mut self, kws: &[&str]) -> bool {
        let save = self.at;
        if kws.iter().all(|k| self.keyword(k)) {
            return true;
        }
        self.at = save;
        false
    }

    fn punct(&mut self, p: char) -> bool {
        if self.toks.get(self.at) == Some(&Tok::Punct(p)) {
            self.at += 1;
            return true;
        }
        false
    }

    fn ident(&mut self) -> Option<String> {
        match self.toks.get(self.at)? {
            Tok::Word(w) | Tok::Quoted(w) => {
                let w = w.clone();
                self.at += 1;
                Some(w)
            }
            Tok::Punct(_) => None,
        }
    }

    fn table(&mut self) -> Option<TableRef> {
        let first = self.ident()?;
        if self.punct('.') {
            let second = self.ident()?;
            return Some((Some(first), second));
        }
        Some((None, first))
    }

    fn table_list(&mut self) -> Vec<TableRef> {
        let mut out = Vec::new();
        while let Some(t) = self.table() {
            out.push(t);
            if !self.punct(',') {
                break;
            }
        }
        out
    }
}

/// Classifies a statement from a QUERY event.
pub(crate) fn classify(sql: &str) -> Statement {
    let mut p = Parser {
        toks: tokenize(sql),
        at: 0,
    };
    if p.keyword("BEGIN") || p.keywords(&["START", "TRANSACTION"]) || p.keywords(&["XA", "START"]) {
        return Statement::Begin;
    }
    if p.keyword("COMMIT") || p.keywords(&["XA", "COMMIT"]) {
        return Statement::Commit;
    }
    if p.keyword("ROLLBACK") {
        return if p.keyword("TO") {
            Statement::Other
        } else {
            Statement::Rollback
        };
    }
    if access_statement(&mut p) {
        return Statement::Access;
    }
    for (kw, skip) in [
        (
            "INSERT",
            &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"][..],
        ),
        ("REPLACE", &["LOW_PRIORITY", "DELAYED", "INTO"][..]),
        ("UPDATE", &["LOW_PRIORITY", "IGNORE"][..]),
        ("DELETE", &["LOW_PRIORITY", "QUICK", "IGNORE", "FROM"][..]),
    ] {
        if p.keyword(kw) {
            for s in skip {
                p.keyword(s);
            }
            return Statement::Dml(p.table());
        }
    }
    if p.keyword("LOAD") {
        return Statement::Dml(None);
    }
    if p.keyword("TRUNCATE") {
        p.keyword("TABLE");
        return p.table().map_or(Statement::Other, Statement::Truncate);
    }
    if p.keyword("ALTER") {
        p.keyword("ONLINE");
        p.keyword("IGNORE");
        if p.keyword("TABLE") {
            p.keywords(&["IF", "EXISTS"]);
            return p
                .table()
                .map_or(Statement::Other, |t| Statement::Changed(vec![t]));
        }
        return Statement::Other;
    }
    if p.keyword("DROP") {
        if p.keyword("TEMPORARY") {
            return Statement::Other;
        }
        if p.keyword("TABLE") || p.keyword("TABLES") {
            p.keywords(&["IF", "EXISTS"]);
            let t = p.table_list();
            return if t.is_empty() {
                Statement::Other
            } else {
                Statement::Changed(t)
            };
        }
        return index_statement(&mut p);
    }
    if p.keyword("RENAME") {
        if !(p.keyword("TABLE") || p.keyword("TABLES")) {
            return Statement::Other;
        }
        let (mut from, mut to) = (Vec::new(), Vec::new());
        loop {
            p.keywords(&["IF", "EXISTS"]);
            let Some(a) = p.table() else { break };
            p.keyword("WAIT");
            if !p.keyword("TO") {
                break;
            }
            let Some(b) = p.table() else { break };
            from.push(a);
            to.push(b);
            if !p.punct(',') {
                break;
            }
        }
        return Statement::Renamed { from, to };
    }
    if p.keyword("CREATE") {
        p.keywords(&["OR", "REPLACE"]);
        if p.keyword("TEMPORARY") {
            return Statement::Other;
        }
        if p.keyword("TABLE") {
            p.keywords(&["IF", "NOT", "EXISTS"]);
            return p
                .table()
                .map_or(Statement::Other, |t| Statement::Created(vec![t]));
        }
        return index_statement(&mut p);
    }
    Statement::Other
}

/// GRANT, REVOKE, `{CREATE|ALTER|DROP|RENAME} {USER|ROLE}`, `SET PASSWORD`, `SET DEFAULT
/// ROLE`, `FLUSH PRIVILEGES`: statements after which a session may read other things.
fn access_statement(p: &mut Parser) -> bool {
    let save = p.at;
    if p.keyword("GRANT") || p.keyword("REVOKE") {
        return true;
    }
    if p.keywords(&["FLUSH", "PRIVILEGES"]) || p.keywords(&["SET", "PASSWORD"]) {
        return true;
    }
    if p.keywords(&["SET", "DEFAULT", "ROLE"]) {
        return true;
    }
    if p.keyword("CREATE") || p.keyword("ALTER") || p.keyword("DROP") || p.keyword("RENAME") {
        p.keywords(&["OR", "REPLACE"]);
        if p.keyword("USER") || p.keyword("ROLE") {
            return true;
        }
    }
    p.at = save;
    false
}

/// `[UNIQUE|FULLTEXT|SPATIAL] INDEX name ON table` (after CREATE or DROP).
fn index_statement(p: &mut Parser) -> Statement {
    p.keyword("ONLINE");
    let _ = p.keyword("UNIQUE") || p.keyword("FULLTEXT") || p.keyword("SPATIAL");
    if !p.keyword("INDEX") {
        return Statement::Other;
    }
    p.keywords(&["IF", "NOT", "EXISTS"]);
    p.keywords(&["IF", "EXISTS"]);
    if p.ident().is_none() || !p.keyword("ON") {
        return Statement::Other;
    }
    p.table()
        .map_or(Statement::Other, |t| Statement::Changed(vec![t]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(db: Option<&str>, name: &str) -> TableRef {
        (db.map(str::to_string), name.to_string())
    }

    #[test]
    fn privilege_statements_are_access_changes() {
        for sql in [
            "GRANT SELECT ON shop.* TO 'app'@'%'",
            "revoke select on shop.items from app",
            "CREATE USER 'x'@'%' IDENTIFIED BY 'p'",
            "DROP ROLE r",
            "CREATE OR REPLACE USER x",
            "SET PASSWORD FOR x = PASSWORD('p')",
            "SET DEFAULT ROLE r FOR x",
            "FLUSH PRIVILEGES",
            "RENAME USER a TO b",
        ] {
            assert_eq!(classify(sql), Statement::Access, "{sql}");
        }
        assert_eq!(
            classify("CREATE TABLE t (a int)"),
            Statement::Created(vec![t(None, "t")])
        );
        assert_eq!(classify("SET @x = 1"), Statement::Other);
    }

    #[test]
    fn mariadb_gtid_event_decodes() {
        let mut body = Vec::new();
        body.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        body.extend_from_slice(&7u32.to_le_bytes());
        body.push(FL_STANDALONE | 8);
        body.extend_from_slice(&[0; 6]);
        let g = MariaGtid::decode(&body, 42).unwrap();
        assert_eq!(
            g,
            MariaGtid {
                domain: 7,
                server: 42,
                seq: 0x0102_0304_0506_0708,
                flags: 9
            }
        );
        assert!(g.standalone());
        assert_eq!(MariaGtid::decode(&body[..12], 1), None);
    }

    #[test]
    fn gtid_state_parses_applies_and_prints() {
        let mut s = GtidState::parse("1-2-3, 0-1-17").unwrap();
        assert_eq!(s.to_string(), "0-1-17,1-2-3");
        s.apply(&MariaGtid {
            domain: 0,
            server: 5,
            seq: 18,
            flags: 0,
        });
        assert_eq!(s.to_string(), "0-5-18,1-2-3");
        assert!(GtidState::parse("").unwrap().is_empty());
        assert_eq!(GtidState::parse("0-1"), None);
        assert_eq!(GtidState::parse("a-b-c"), None);
    }

    #[test]
    fn statements_classify() {
        assert_eq!(classify("BEGIN"), Statement::Begin);
        assert_eq!(classify("COMMIT"), Statement::Commit);
        assert_eq!(classify("ROLLBACK"), Statement::Rollback);
        assert_eq!(classify("ROLLBACK TO SAVEPOINT a"), Statement::Other);
        assert_eq!(
            classify("TRUNCATE TABLE `db`.`t1`"),
            Statement::Truncate(t(Some("db"), "t1"))
        );
        assert_eq!(classify("truncate t2"), Statement::Truncate(t(None, "t2")));
        assert_eq!(
            classify("/* c */ ALTER TABLE t ADD COLUMN x INT"),
            Statement::Changed(vec![t(None, "t")])
        );
        assert_eq!(
            classify("DROP TABLE IF EXISTS `a`, b.`c``d` /* generated by server */"),
            Statement::Changed(vec![t(None, "a"), t(Some("b"), "c`d")])
        );
        assert_eq!(classify("DROP TEMPORARY TABLE x"), Statement::Other);
        assert_eq!(
            classify("CREATE TABLE IF NOT EXISTS n (id int primary key)"),
            Statement::Created(vec![t(None, "n")])
        );
        assert_eq!(
            classify("RENAME TABLE a TO b, d.c TO d.e"),
            Statement::Renamed {
                from: vec![t(None, "a"), t(Some("d"), "c")],
                to: vec![t(None, "b"), t(Some("d"), "e")]
            }
        );
        assert_eq!(
            classify("CREATE UNIQUE INDEX i ON t (x)"),
            Statement::Changed(vec![t(None, "t")])
        );
        assert_eq!(
            classify("DROP INDEX i ON db.t"),
            Statement::Changed(vec![t(Some("db"), "t")])
        );
        assert_eq!(
            classify("INSERT IGNORE INTO db.t VALUES (1)"),
            Statement::Dml(Some(t(Some("db"), "t")))
        );
        assert_eq!(
            classify("update `t` set a = 1"),
            Statement::Dml(Some(t(None, "t")))
        );
        assert_eq!(
            classify("DELETE FROM t WHERE 1"),
            Statement::Dml(Some(t(None, "t")))
        );
        assert_eq!(
            classify("LOAD DATA INFILE 'x' INTO TABLE t"),
            Statement::Dml(None)
        );
        assert_eq!(classify("CREATE DATABASE x"), Statement::Other);
        assert_eq!(classify("GRANT ALL ON *.* TO x"), Statement::Access);
        assert_eq!(classify(""), Statement::Other);
        assert_eq!(
            classify("/*!40000 ALTER TABLE t DISABLE KEYS */"),
            Statement::Changed(vec![t(None, "t")])
        );
    }

    #[test]
    fn classify_never_panics_on_arbitrary_text() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet: Vec<char> = "`'\"/*!-#., ()ab TABLE DROP RENAME TO ALTER CREATE INDEX ON é\n"
            .chars()
            .collect();
        for _ in 0..5_000 {
            let mut s = String::new();
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let _ = classify(&s);
            x = x.wrapping_add(1);
        }
    }

    #[test]
    fn event_names_are_readable() {
        assert_eq!(event_name(30), "WRITE_ROWS (30)");
        assert_eq!(event_name(162), "GTID (MariaDB) (162)");
        assert_eq!(event_name(200), "type 200");
    }
}

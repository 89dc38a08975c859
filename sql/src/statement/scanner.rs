//! A tiny forward-only scanner over statement text, shared by the routing classifier and the
//! parser of Larder's own statements.

use crate::error::SqlError;

/// A tiny forward-only scanner over statement text: words, names, quoted strings, numbers,
/// punctuation, skipping whitespace and comments. Never panics: every index it slices at is
/// an ASCII boundary it has just checked.
#[derive(Clone)]
pub(super) struct Scanner<'a> {
    pub(super) s: &'a str,
    pub(super) pos: usize,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(s: &'a str) -> Self {
        Scanner { s, pos: 0 }
    }

    pub(super) fn bytes(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    pub(super) fn skip_trivia(&mut self) {
        let b = self.bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            let rest = &b[self.pos..];
            if rest.starts_with(b"--") || rest.starts_with(b"#") {
                while self.pos < b.len() && b[self.pos] != b'\n' {
                    self.pos += 1;
                }
            } else if rest.starts_with(b"/*") {
                self.skip_block_comment();
            } else {
                return;
            }
        }
    }

    /// Skips a (possibly nested, as in Postgres) block comment starting at `pos`.
    pub(super) fn skip_block_comment(&mut self) {
        let b = self.bytes();
        let mut depth = 0usize;
        while self.pos < b.len() {
            if b[self.pos..].starts_with(b"/*") {
                depth += 1;
                self.pos += 2;
            } else if b[self.pos..].starts_with(b"*/") {
                depth = depth.saturating_sub(1);
                self.pos += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.pos += 1;
            }
        }
    }

    /// An unquoted word: `[A-Za-z_][A-Za-z0-9_$]*`.
    pub(super) fn word(&mut self) -> Option<&'a str> {
        self.skip_trivia();
        let b = self.bytes();
        let start = self.pos;
        match b.get(start) {
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {}
            _ => return None,
        }
        let mut end = start + 1;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b'$')
        {
            end += 1;
        }
        self.pos = end;
        Some(&self.s[start..end])
    }

    /// Consumes `kw` (case-insensitive) if it is the next word.
    pub(super) fn keyword(&mut self, kw: &str) -> bool {
        let mut probe = self.clone();
        match probe.word() {
            Some(w) if w.eq_ignore_ascii_case(kw) => {
                *self = probe;
                true
            }
            _ => false,
        }
    }

    pub(super) fn expect_keyword(&mut self, kw: &str) -> Result<(), SqlError> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(stmt_err(format!("expected {}", kw.to_ascii_uppercase())))
        }
    }

    /// A name: an unquoted word (folded to lower case) or a `"quoted"`/`` `quoted` `` name.
    pub(super) fn name(&mut self) -> Option<String> {
        self.skip_trivia();
        match self.peek() {
            Some(q @ (b'"' | b'`')) => self.quoted(q),
            _ => self.word().map(|w| w.to_ascii_lowercase()),
        }
    }

    /// A `'single-quoted'` string literal with `''` escapes.
    pub(super) fn string_lit(&mut self) -> Option<String> {
        self.skip_trivia();
        if self.peek() != Some(b'\'') {
            return None;
        }
        self.quoted(b'\'')
    }

    /// Text between `quote` characters starting at `pos`; a doubled quote is one quote.
    pub(super) fn quoted(&mut self, quote: u8) -> Option<String> {
        let b = self.bytes();
        let mut out = String::new();
        let mut i = self.pos + 1;
        let mut seg_start = i;
        while i < b.len() {
            if b[i] == quote {
                out.push_str(&self.s[seg_start..i]);
                if b.get(i + 1) == Some(&quote) {
                    out.push(quote as char);
                    i += 2;
                    seg_start = i;
                    continue;
                }
                self.pos = i + 1;
                return Some(out);
            }
            i += 1;
        }
        None
    }

    pub(super) fn number(&mut self) -> Option<u64> {
        self.skip_trivia();
        let b = self.bytes();
        let start = self.pos;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let n = self.s[start..end].parse().ok()?;
        self.pos = end;
        Some(n)
    }

    pub(super) fn punct(&mut self, c: u8) -> bool {
        self.skip_trivia();
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// True when only trivia and semicolons remain.
    pub(super) fn at_end(&mut self) -> bool {
        loop {
            self.skip_trivia();
            if !self.punct(b';') {
                break;
            }
        }
        self.pos >= self.s.len()
    }

    pub(super) fn expect_end(&mut self) -> Result<(), SqlError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(stmt_err(format!(
                "unexpected text: {}",
                self.rest().chars().take(40).collect::<String>()
            )))
        }
    }

    pub(super) fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }
}

pub(super) fn stmt_err(msg: impl Into<String>) -> SqlError {
    SqlError::Statement(msg.into())
}

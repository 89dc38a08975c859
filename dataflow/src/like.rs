//! `LIKE` pattern matching as Postgres does it for text: `%` matches any run of characters,
//! `_` exactly one character, and a backslash makes the next character literal. A pattern
//! ending in a lone backslash is an error here whatever the text; Postgres raises it only
//! when matching reaches that backslash (`'abc' LIKE 'abc\'` is false there). Erring more
//! often is safe: the row is poisoned and the query answered upstream.
//!
//! Matching works on characters (not bytes) and uses the classic greedy algorithm with a
//! single backtrack point, which is linear in practice and O(n·m) in the worst case.

use crate::error::EvalError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Char(char),
    One,
    Any,
}

fn tokenize(pattern: &str) -> Result<Vec<Token>, EvalError> {
    let mut out = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '\\' => match chars.next() {
                Some(e) => Token::Char(e),
                None => {
                    return Err(EvalError::InvalidInput(
                        "LIKE pattern must not end with escape character".into(),
                    ))
                }
            },
            '%' => {
                if out.last() == Some(&Token::Any) {
                    continue;
                }
                Token::Any
            }
            '_' => Token::One,
            c => Token::Char(c),
        });
    }
    Ok(out)
}

/// Whether `text` matches the LIKE `pattern` (case-sensitive).
pub fn like_match(text: &str, pattern: &str) -> Result<bool, EvalError> {
    let pat = tokenize(pattern)?;
    let text: Vec<char> = text.chars().collect();
    let (mut t, mut p) = (0usize, 0usize);
    // Position after the last `%` seen in the pattern, and the text position it was tried at.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pat.get(p) {
            Some(Token::Any) => {
                p += 1;
                backtrack = Some((p, t));
                continue;
            }
            Some(Token::One) => {
                t += 1;
                p += 1;
                continue;
            }
            Some(Token::Char(c)) if *c == text[t] => {
                t += 1;
                p += 1;
                continue;
            }
            _ => {}
        }
        match backtrack {
            Some((bp, bt)) => {
                p = bp;
                t = bt + 1;
                backtrack = Some((bp, bt + 1));
            }
            None => return Ok(false),
        }
    }
    Ok(pat[p.min(pat.len())..].iter().all(|tok| *tok == Token::Any))
}

#[cfg(test)]
mod tests {
    use super::like_match;

    fn m(t: &str, p: &str) -> bool {
        like_match(t, p).expect("valid pattern")
    }

    #[test]
    fn wildcards() {
        assert!(m("abc", "abc"));
        assert!(!m("abc", "ab"));
        assert!(m("abc", "a%"));
        assert!(m("abc", "%c"));
        assert!(m("abc", "%b%"));
        assert!(m("abc", "a_c"));
        assert!(!m("abc", "a_"));
        assert!(m("", "%"));
        assert!(!m("", "_"));
        assert!(m("aaab", "%a%ab"));
        assert!(m("mississippi", "%iss%ppi"));
        assert!(!m("mississippi", "%iss%ppx"));
        assert!(m("héllo", "h_llo"));
        assert!(m("ab", "%%%b"));
    }

    #[test]
    fn escapes() {
        assert!(m("50%", "50\\%"));
        assert!(!m("500", "50\\%"));
        assert!(m("a_b", "a\\_b"));
        assert!(!m("axb", "a\\_b"));
        assert!(m("a\\b", "a\\\\b"));
        assert!(like_match("abc", "abc\\").is_err());
    }
}

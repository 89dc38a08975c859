//! Decoding of `COPY ... TO STDOUT` text format.
//!
//! Why text format: it is the format `pgtypes::parse_text` understands, identical to what
//! pgoutput sends in the stream, so snapshot rows and streamed rows decode through one path.
//! Rows end with `\n`, fields are separated by `\t`, `\N` is NULL, and the field text is
//! backslash-escaped (`\t \n \r \\ \b \f \v`, `\ooo` octal, `\xhh` hex; any other escaped
//! character stands for itself).

use std::borrow::Cow;

/// Splits one row (without its trailing newline) into decoded fields; `None` is SQL NULL.
/// Fails when an escape produces bytes that are not UTF-8.
pub fn decode_row(line: &[u8]) -> Result<Vec<Option<String>>, String> {
    line.split(|b| *b == b'\t').map(decode_field).collect()
}

/// Calls `f` with each field of one row (without its trailing newline), in order. A field
/// without escapes is lent from `line` (no allocation); `None` is SQL NULL. Stops at the first
/// error, of decoding or of `f`.
pub fn for_each_field<E: From<String>>(
    line: &[u8],
    mut f: impl FnMut(Option<Cow<'_, str>>) -> Result<(), E>,
) -> Result<(), E> {
    for raw in line.split(|b| *b == b'\t') {
        f(field_cow(raw)?)?;
    }
    Ok(())
}

/// One field, borrowed when it holds no escape.
fn field_cow(raw: &[u8]) -> Result<Option<Cow<'_, str>>, String> {
    if raw == b"\\N" {
        return Ok(None);
    }
    if !raw.contains(&b'\\') {
        return std::str::from_utf8(raw)
            .map(|s| Some(Cow::Borrowed(s)))
            .map_err(|e| format!("COPY field is not UTF-8: {e}"));
    }
    Ok(decode_field(raw)?.map(Cow::Owned))
}

/// Decodes one field of a COPY text row.
pub fn decode_field(raw: &[u8]) -> Result<Option<String>, String> {
    if raw == b"\\N" {
        return Ok(None);
    }
    if !raw.contains(&b'\\') {
        return String::from_utf8(raw.to_vec())
            .map(Some)
            .map_err(|e| format!("COPY field is not UTF-8: {e}"));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&esc) = raw.get(i) else {
            // A trailing lone backslash: keep it, as Postgres does on input.
            out.push(b'\\');
            break;
        };
        i += 1;
        match esc {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0C),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0B),
            b'0'..=b'7' => {
                let mut v: u32 = (esc - b'0') as u32;
                let mut digits = 1;
                while digits < 3 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                            digits += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xFF) as u8);
            }
            b'x' => {
                let mut v: u32 = 0;
                let mut digits = 0;
                while digits < 2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.push(b'x');
                } else {
                    out.push(v as u8);
                }
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out)
        .map(Some)
        .map_err(|e| format!("COPY field is not UTF-8: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn nulls_and_plain_fields() {
        assert_eq!(
            decode_row(b"1\t\\N\tabc\t").unwrap(),
            vec![s("1"), None, s("abc"), s("")]
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(
            decode_field(b"a\\tb\\nc\\\\d\\re\\bf\\fg\\vh").unwrap(),
            s("a\tb\nc\\d\re\u{8}f\u{c}g\u{b}h")
        );
        assert_eq!(decode_field(b"\\101\\x42\\7").unwrap(), s("AB\u{7}"));
        assert_eq!(decode_field(b"\\\\x0aff").unwrap(), s("\\x0aff"));
        assert_eq!(decode_field(b"\\q").unwrap(), s("q"));
        assert_eq!(decode_field(b"\\xzz").unwrap(), s("xzz"));
        // A literal "\N" inside a longer value is escaped as "\\N" by Postgres.
        assert_eq!(decode_field(b"\\\\N").unwrap(), s("\\N"));
    }

    #[test]
    fn fields_are_lent_unless_escaped() {
        let mut seen = Vec::new();
        for_each_field::<String>(b"1\t\\N\tab\\tc\t", |f| {
            seen.push(match f {
                None => "NULL".to_string(),
                Some(Cow::Borrowed(s)) => format!("lent {s}"),
                Some(Cow::Owned(s)) => format!("owned {s}"),
            });
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["lent 1", "NULL", "owned ab\tc", "lent "]);
        assert!(for_each_field::<String>(b"\\377", |_| Ok(())).is_err());
    }

    #[test]
    fn multibyte_utf8_and_octal_utf8_bytes() {
        assert_eq!(decode_field("héllo".as_bytes()).unwrap(), s("héllo"));
        assert_eq!(decode_field(b"\\303\\251").unwrap(), s("é"));
        assert!(decode_field(b"\\377").is_err());
    }
}

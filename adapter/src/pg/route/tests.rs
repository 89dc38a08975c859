use super::*;

fn encoded_bind(portal: &str, statement: &str) -> BytesMut {
    let mut buf = BytesMut::new();
    Bind {
        portal: portal.into(),
        statement: statement.into(),
        param_formats: vec![1],
        params: vec![Some(Bytes::from_static(&[0, 0, 0, 7])), None],
        result_formats: vec![],
    }
    .encode(&mut buf);
    buf
}

#[test]
fn bind_statement_name_reads_only_the_header() {
    let buf = encoded_bind("", "stmt_1");
    assert_eq!(bind_statement_name(&buf[5..]), Some("stmt_1"));
    let buf = encoded_bind("p", "");
    assert_eq!(bind_statement_name(&buf[5..]), Some(""));
    assert_eq!(bind_statement_name(b"no terminator"), None);
    assert_eq!(bind_statement_name(b"portal\0unterminated"), None);
}

#[test]
fn format_codes_follow_the_protocol_rules() {
    assert!(!Formats::all_text().is_binary(3));
    assert!(Formats::new(&[1]).is_binary(5));
    let per_column = [0, 1];
    let f = Formats::new(&per_column);
    assert!(!f.is_binary(0));
    assert!(f.is_binary(1));
    assert!(!f.is_binary(2));
}

#[test]
fn bound_values_take_the_type_of_their_slot() {
    let bind = Bind {
        portal: String::new(),
        statement: String::new(),
        param_formats: vec![1, 0],
        params: vec![
            Some(Bytes::from_static(&[0, 0, 0, 42])),
            Some(Bytes::from_static(b"x")),
        ],
        result_formats: vec![],
    };
    let params = vec![
        ParamSource::List(vec![ParamSource::Placeholder(1)]),
        ParamSource::Placeholder(2),
    ];
    let values = decode_bind(&bind, &[], &params, &[SqlType::Int4, SqlType::Text]).unwrap();
    assert_eq!(
        values,
        vec![Some(Value::Int(42)), Some(Value::Text("x".into()))]
    );
    // A declared parameter type wins over the slot's type.
    let values = decode_bind(&bind, &[20], &params, &[SqlType::Int4, SqlType::Text]);
    assert!(values.is_err(), "4 bytes are not an int8");
    // Binary without any known type is refused rather than guessed.
    let err = decode_bind(&bind, &[], &[], &[]).unwrap_err();
    assert!(err.contains("unknown type"), "{err}");
}

#[test]
fn lsn_and_multi_statement_helpers() {
    assert_eq!(parse_lsn("0/154B308"), Some(0x154B308));
    assert_eq!(parse_lsn("1A/0"), Some(0x1A << 32));
    assert_eq!(parse_lsn("nope"), None);
    assert!(!is_multi_statement("SELECT 1"));
    assert!(!is_multi_statement("SELECT 1;  ;\n"));
    assert!(is_multi_statement("BEGIN; ALTER TABLE t ADD c int"));
}

#[test]
fn startup_output_settings() {
    let p = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    assert!(!custom_output_at_startup(&p("extra_float_digits", "3")));
    assert!(custom_output_at_startup(&p("extra_float_digits", "0")));
    assert!(custom_output_at_startup(&p("bytea_output", "escape")));
    assert!(custom_output_at_startup(&p(
        "options",
        "-c bytea_output=escape"
    )));
    assert!(!custom_output_at_startup(&p("application_name", "x")));
}

#[test]
fn text_tables_encode_rows_and_errors() {
    let table = TextTable {
        columns: vec!["a".into()],
        rows: vec![vec![Some("1".into())], vec![None]],
        tag: None,
    };
    let out = encode_text_table(
        BytesMut::new(),
        Ok(table),
        Header::Simple,
        TransactionStatus::Idle,
    );
    let tags: Vec<u8> = super::super::messages::FrameIter::new(&out, usize::MAX)
        .map(|m| m.unwrap().frame.tag)
        .collect();
    assert_eq!(tags, b"TDDCZ");
    let err = StatementError {
        sqlstate: "0A000",
        message: "no".into(),
    };
    let out = encode_text_table(
        BytesMut::new(),
        Err(err),
        Header::Simple,
        TransactionStatus::InTransaction,
    );
    let tags: Vec<u8> = super::super::messages::FrameIter::new(&out, usize::MAX)
        .map(|m| m.unwrap().frame.tag)
        .collect();
    assert_eq!(tags, b"EZ");
}

#!/usr/bin/env python3
"""psycopg 3 client suite for Larder's end-to-end tests.

Usage: psycopg_suite.py URL  -> prints one JSON document on stdout.

The test runs this against Postgres directly and through Larder (on two identically prepared,
empty databases) and requires identical output, so everything printed must be deterministic:
no pids, no timestamps of "now", no database names.
"""
import datetime
import decimal
import json
import sys
import uuid

import psycopg
from psycopg import sql


def plain(v):
    """Makes a value JSON-serializable while keeping its type visible."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (decimal.Decimal, uuid.UUID)):
        return f"{type(v).__name__}:{v}"
    if isinstance(v, (datetime.date, datetime.time, datetime.datetime, datetime.timedelta)):
        return f"{type(v).__name__}:{v.isoformat() if hasattr(v, 'isoformat') else v}"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "bytes:" + bytes(v).hex()
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return f"{type(v).__name__}:{v}"


def rows(cur):
    return [plain(list(r)) for r in cur.fetchall()]


def err(e):
    d = e.diag
    return {
        "class": type(e).__name__,
        "sqlstate": e.sqlstate,
        "severity": d.severity,
        "severity_nonlocalized": d.severity_nonlocalized,
        "message": d.message_primary,
        "detail": d.message_detail,
        "hint": d.message_hint,
        "position": d.statement_position,
        "context": d.context,
        "schema": d.schema_name,
        "table": d.table_name,
        "column": d.column_name,
        "datatype": d.datatype_name,
        "constraint": d.constraint_name,
        "source_function": d.source_function,
    }


TYPES_QUERY = """
SELECT 1::int2, 2::int4, 3::int8, 1.5::float4, 2.25::float8, 12345.678::numeric(10,3),
       'NaN'::numeric, 'text'::text, 'vc'::varchar(5), 'c'::char(3), true, NULL::int,
       '\\x00ff10'::bytea, '2024-02-29'::date, '13:14:15.5'::time,
       '2024-02-29 13:14:15.123456'::timestamp, '2024-02-29 13:14:15+02'::timestamptz,
       '1 year 2 mons 3 days 04:05:06.7'::interval, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid,
       '{"a": [1, 2, {"b": null}]}'::json, '{"k": "v", "n": 1.5}'::jsonb,
       ARRAY[1, 2, NULL]::int4[], ARRAY['x', 'y z', NULL]::text[], ARRAY[[1,2],[3,4]]::int8[],
       '192.168.0.1/24'::inet, '10.0.0.0/8'::cidr, '[1,10)'::int4range,
       'Infinity'::float8, '{}'::int4[], ''::text, E'tab\\tnl\\n'::text,
       'héllo ünïcode ✓'::text, 12.50::money, '(1,2)'::point, 'a & b'::tsquery, B'1011'::bit(4),
       'a=>1'::text, 4294967295::oid, 'pg_class'::regclass
"""


def section_types(conn, out):
    with conn.cursor() as cur:
        cur.execute(TYPES_QUERY)
        out["types_text"] = rows(cur)
        out["types_text_desc"] = [(d.name, d.type_code) for d in cur.description]
    with conn.cursor(binary=True) as cur:
        # money, tsquery and regclass have no binary loader in psycopg: drop them in binary mode
        cur.execute(TYPES_QUERY.replace("12.50::money, ", "").replace(", 'pg_class'::regclass", "")
                    .replace("'a & b'::tsquery, ", ""))
        out["types_binary"] = rows(cur)
        out["types_binary_formats"] = [cur.pgresult.fformat(i) for i in range(cur.pgresult.nfields)]


def section_params(conn, out):
    with conn.cursor() as cur:
        # Server-side binding: parameters travel separately ($1...), typed by psycopg.
        cur.execute(
            "SELECT %s::int + %s, %s || 'x', %s::numeric * 2, %s, %s, %s::date, %s, %s::jsonb",
            (1, 2, "abc", decimal.Decimal("1.25"), None, True, datetime.date(2020, 1, 2),
             b"\x00\x01", json.dumps({"a": 1})),
        )
        out["params_text"] = rows(cur)
        cur.execute("SELECT %b::int8, %b::text, %b::bytea, %b::float8", (2**40, "bin", b"\xff", 0.5))
        out["params_binary"] = rows(cur)
        cur.execute("SELECT %(a)s::int, %(b)s::text, %(a)s::int * 10", {"a": 7, "b": "named"})
        out["params_named"] = rows(cur)
        cur.execute(sql.SQL("SELECT {} FROM generate_series(1, %s) g").format(sql.Identifier("g")), (5,))
        out["params_composed"] = rows(cur)


def section_prepared(conn, out):
    res = []
    with conn.cursor() as cur:
        for i in range(4):
            cur.execute("SELECT %s::int * 3, %s::text", (i, f"p{i}"), prepare=True)
            res.append(rows(cur))
    conn.prepare_threshold = 0  # every query becomes a named prepared statement
    with conn.cursor() as cur:
        for i in range(3):
            cur.execute("SELECT count(*) FROM items WHERE id > %s", (i,))
            res.append(rows(cur))
    conn.prepare_threshold = 5
    out["prepared"] = res


def section_pipeline(conn, out):
    res = []
    with conn.pipeline():
        with conn.cursor() as c1, conn.cursor() as c2, conn.cursor() as c3:
            c1.execute("INSERT INTO items (id, name, price) VALUES (%s, %s, %s) RETURNING id",
                       (100, "pipe", decimal.Decimal("9.99")))
            c2.execute("SELECT name FROM items WHERE id = %s", (100,))
            c3.executemany("INSERT INTO items (id, name) VALUES (%s, %s)",
                           [(101, "a"), (102, "b"), (103, "c")])
            conn.commit()
            res.append(rows(c1))
            res.append(rows(c2))
    try:
        with conn.pipeline():
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.execute("SELECT 1/0")
                cur.execute("SELECT 2")
    except psycopg.Error as e:
        res.append(err(e))
    conn.rollback()
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM items WHERE id >= 100")
        res.append(rows(cur))
    conn.commit()
    out["pipeline"] = res


def section_copy(conn, out):
    with conn.cursor() as cur:
        with cur.copy("COPY items (id, name, price) FROM STDIN") as copy:
            for i in range(200, 260):
                copy.write_row((i, f"copy {i}\twith tab", decimal.Decimal(i) / 4))
        with cur.copy("COPY items (id, name, price) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "numeric"])
            for i in range(300, 310):
                copy.write_row((i, f"bin {i}", decimal.Decimal("0.5") * i))
        with cur.copy("COPY (SELECT id, name, price FROM items WHERE id >= 200 ORDER BY id) TO STDOUT") as copy:
            out["copy_out_text"] = [plain(list(r)) for r in copy.rows()]
        with cur.copy("COPY (SELECT id, name FROM items WHERE id >= 300 ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text"])
            out["copy_out_binary"] = [plain(list(r)) for r in copy.rows()]
        with cur.copy("COPY (SELECT id FROM items WHERE id BETWEEN 200 AND 203 ORDER BY id) TO STDOUT (FORMAT CSV, HEADER)") as copy:
            out["copy_out_raw"] = b"".join(bytes(b) for b in copy).decode()
        conn.commit()
        try:
            with cur.copy("COPY items (id, name) FROM STDIN") as copy:
                copy.write(b"400\tok\nnot-a-number\tbad\n")
        except psycopg.Error as e:
            out["copy_error"] = err(e)
        conn.rollback()
        cur.execute("SELECT count(*), sum(price) FROM items WHERE id >= 200")
        out["copy_count"] = rows(cur)
    conn.commit()


def section_errors(conn, out):
    res = []
    statements = [
        ("SELECT 1/0", None),
        ("SELECT nosuchcolumn FROM items", None),
        ("SELECT * FROM nosuchtable", None),
        ("INSERT INTO items (id, name) VALUES (1, 'dup')", None),
        ("INSERT INTO items (id, name) VALUES (%s, NULL)", (999,)),
        ("SELECT %s::int", ("not an int",)),
        ("SELEC 1", None),
        ("DO $$ BEGIN RAISE EXCEPTION 'custom' USING DETAIL = 'd', HINT = 'h', ERRCODE = 'P0042'; END $$", None),
        ("INSERT INTO items (id, name, price) VALUES (998, 'neg', -1)", None),
    ]
    for q, p in statements:
        try:
            with conn.cursor() as cur:
                cur.execute(q, p)
        except psycopg.Error as e:
            res.append(err(e))
        conn.rollback()
    out["errors"] = res


def section_transactions(conn, out):
    res = []
    with conn.transaction():
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items (id, name) VALUES (500, 'outer')")
            try:
                with conn.transaction():
                    cur.execute("INSERT INTO items (id, name) VALUES (501, 'inner')")
                    cur.execute("INSERT INTO items (id, name) VALUES (500, 'dup')")
            except psycopg.errors.UniqueViolation as e:
                res.append(e.sqlstate)
            with conn.transaction():
                cur.execute("INSERT INTO items (id, name) VALUES (502, 'inner ok')")
    with conn.cursor() as cur:
        cur.execute("SELECT id, name FROM items WHERE id BETWEEN 500 AND 599 ORDER BY id")
        res.append(rows(cur))
        conn.commit()
        cur.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY")
        cur.execute("SHOW transaction_isolation")
        res.append(rows(cur))
        try:
            cur.execute("INSERT INTO items (id, name) VALUES (503, 'ro')")
        except psycopg.Error as e:
            res.append(err(e))
        conn.rollback()
        res.append(str(conn.info.transaction_status))
    conn.commit()
    out["transactions"] = res


def section_named_cursor(conn, out):
    with conn.cursor(name="big_cursor") as cur:
        cur.itersize = 37
        cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 500) g")
        total = 0
        last = None
        for r in cur:
            total += 1
            last = r
        out["named_cursor"] = [total, plain(list(last))]
    conn.commit()
    with conn.cursor() as cur:
        cur.execute("SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g")
        out["big_result"] = [cur.rowcount, plain(list(cur.fetchall()[-1]))]


def section_notices_and_notify(url, out):
    notices = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(
            [d.severity, d.sqlstate, d.message_primary, d.message_detail, d.message_hint]))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'note %', 1; RAISE WARNING 'warn' USING DETAIL = 'dd', HINT = 'hh'; END $$")
        conn.execute("SET client_min_messages = debug1")
        conn.execute("RESET client_min_messages")
        conn.execute("LISTEN larder_chan")
        conn.execute("NOTIFY larder_chan, 'payload one'")
        conn.execute("SELECT pg_notify('larder_chan', 'payload two')")
        got = [[n.channel, n.payload] for n in conn.notifies(timeout=5, stop_after=2)]
        conn.execute("UNLISTEN *")
        conn.execute("SET application_name = 'psycopg-suite'")
        settings = [conn.execute("SHOW application_name").fetchone()[0],
                    conn.info.parameter_status("application_name"),
                    conn.info.parameter_status("server_encoding"),
                    conn.info.parameter_status("client_encoding"),
                    conn.info.parameter_status("DateStyle"),
                    conn.info.parameter_status("integer_datetimes"),
                    conn.info.parameter_status("standard_conforming_strings"),
                    conn.info.server_version // 10000]
    out["notices"] = notices
    out["notifications"] = got
    out["settings"] = settings


def main():
    url = sys.argv[1]
    out = {}
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            cur.execute("""
                CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL,
                                    price numeric(10, 2) CHECK (price IS NULL OR price >= 0))""")
            cur.executemany("INSERT INTO items (id, name, price) VALUES (%s, %s, %s)",
                            [(i, f"item {i}", decimal.Decimal(i) * decimal.Decimal("1.10")) for i in range(1, 11)])
        conn.commit()
        section_types(conn, out)
        section_params(conn, out)
        section_prepared(conn, out)
        section_pipeline(conn, out)
        section_copy(conn, out)
        section_errors(conn, out)
        section_transactions(conn, out)
        section_named_cursor(conn, out)
    section_notices_and_notify(url, out)
    json.dump(out, sys.stdout, indent=1, sort_keys=True, default=plain)
    print()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""asyncpg client suite for Larder's end-to-end tests.

Usage: asyncpg_suite.py URL  -> prints one JSON document on stdout.

asyncpg speaks only the extended protocol, uses named prepared statements for everything (with a
statement cache), binary formats for results and parameters, introspects unknown types through
catalog queries, and reads portals in chunks (PortalSuspended) for cursors. The test runs this
directly and through Larder on identically prepared databases and requires identical output.
"""
import asyncio
import datetime
import decimal
import io
import ipaddress
import json
import sys
import uuid

import asyncpg


def plain(v):
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (decimal.Decimal, uuid.UUID)) or type(v).__name__ == "UUID":
        return f"{type(v).__name__}:{v}"
    if isinstance(v, (datetime.date, datetime.time, datetime.datetime)):
        return f"{type(v).__name__}:{v.isoformat()}"
    if isinstance(v, datetime.timedelta):
        return f"timedelta:{v}"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "bytes:" + bytes(v).hex()
    if isinstance(v, asyncpg.Record):
        return [plain(x) for x in v.values()]
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return f"{type(v).__name__}:{v}"


def err(e):
    return {
        "class": type(e).__name__,
        "sqlstate": e.sqlstate,
        "severity": getattr(e, "severity", None),
        "message": str(e),
        "detail": e.detail,
        "hint": e.hint,
        "position": getattr(e, "position", None),
        "context": getattr(e, "context", None),
        "schema": getattr(e, "schema_name", None),
        "table": getattr(e, "table_name", None),
        "column": getattr(e, "column_name", None),
        "constraint": getattr(e, "constraint_name", None),
    }


TYPES_QUERY = """
SELECT 1::int2 AS i2, 2::int4 AS i4, 3::int8 AS i8, 1.5::float4 AS f4, 2.25::float8 AS f8,
       12345.678::numeric(10,3) AS num, 'NaN'::numeric AS nan, 'text'::text AS t,
       'vc'::varchar(5) AS vc, 'c'::char(3) AS c, true AS b, NULL::int AS n,
       '\\x00ff10'::bytea AS by, '2024-02-29'::date AS d, '13:14:15.5'::time AS tm,
       '13:14:15+03'::timetz AS tmtz,
       '2024-02-29 13:14:15.123456'::timestamp AS ts, '2024-02-29 13:14:15+02'::timestamptz AS tstz,
       'infinity'::timestamp AS ts_inf, '-infinity'::date AS d_inf,
       '1 year 2 mons 3 days 04:05:06.7'::interval AS iv,
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
       '{"a": [1, 2, {"b": null}]}'::json AS js, '{"k": "v", "n": 1.5}'::jsonb AS jsb,
       ARRAY[1, 2, NULL]::int4[] AS ai, ARRAY['x', 'y z', NULL]::text[] AS at,
       ARRAY[[1,2],[3,4]]::int8[] AS a2, '{}'::int4[] AS aempty,
       '192.168.0.1/24'::inet AS inet, '10.0.0.0/8'::cidr AS cidr, '08:00:2b:01:02:03'::macaddr AS mac,
       '[1,10)'::int4range AS r, 'empty'::int4range AS rempty, '[2024-01-01,2024-02-01)'::daterange AS dr,
       '(1,2)'::point AS pt, '((0,0),(1,1))'::box AS bx, '<(0,0),2>'::circle AS circ,
       'Infinity'::float8 AS finf, ''::text AS empty, E'tab\\tnl\\n'::text AS esc,
       'héllo ünïcode ✓'::text AS uni, B'1011'::bit(4) AS bits, 4294967295::oid AS oid,
       'a fat cat'::tsvector AS tsv, 12.5::money AS money, 'pg_class'::regclass::oid AS regc,
       ('(1,abc)'::text) AS comp_text, 'ok'::mood AS enum_val, ROW(1, 'x')::pair AS comp,
       ARRAY['sad', 'ok']::mood[] AS enum_arr
"""


async def section_types(conn, out):
    row = await conn.fetchrow(TYPES_QUERY)
    out["types"] = {k: plain(v) for k, v in row.items()}
    stmt = await conn.prepare(TYPES_QUERY)
    out["types_attrs"] = [[a.name, a.type.name, a.type.kind] for a in stmt.get_attributes()]


async def section_params(conn, out):
    row = await conn.fetchrow(
        "SELECT $1::int + $2, $3::text || 'x', $4::numeric * 2, $5::int IS NULL, $6::bool, $7::date,"
        " $8::bytea, $9::jsonb, $10::timestamptz, $11::uuid, $12::int4[], $13::inet, $14::interval,"
        " $15::float8, $16::mood, $17::int4range",
        1, 2, "abc", decimal.Decimal("1.25"), None, True, datetime.date(2020, 1, 2), b"\x00\x01",
        json.dumps({"a": 1}), datetime.datetime(2021, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc),
        uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), [1, None, 3],
        ipaddress.ip_interface("10.1.2.3/16"), datetime.timedelta(days=1, seconds=5), float("-inf"),
        "happy", asyncpg.Range(3, 7))
    out["params"] = plain(row)


async def section_prepared(conn, out):
    res = []
    stmt = await conn.prepare("SELECT id, name, price FROM items WHERE id <= $1 ORDER BY id")
    res.append([[p.name for p in stmt.get_parameters()], [a.name for a in stmt.get_attributes()]])
    res.append(plain(await stmt.fetch(3)))
    res.append(plain(await stmt.fetchrow(5)))
    res.append(plain(await stmt.fetchval(1, column=1)))
    for i in range(3):  # statement cache reuse
        res.append(await conn.fetchval("SELECT $1::int * 2", i))
    await conn.executemany("INSERT INTO items (id, name, price) VALUES ($1, $2, $3)",
                           [(i, f"many {i}", decimal.Decimal(i)) for i in range(20, 30)])
    res.append(await conn.fetchval("SELECT count(*) FROM items"))
    out["prepared"] = res


async def section_cursor(conn, out):
    res = []
    async with conn.transaction():
        total = 0
        last = None
        async for r in conn.cursor("SELECT g, md5(g::text) FROM generate_series(1, 1000) g", prefetch=64):
            total += 1
            last = r
        res.append([total, plain(last)])
        cur = await conn.cursor("SELECT g FROM generate_series(1, 100) g WHERE g % $1 = 0", 7)
        res.append(plain(await cur.fetch(5)))
        await cur.forward(3)
        res.append(plain(await cur.fetchrow()))
    rows = await conn.fetch("SELECT g, repeat('y', 200) FROM generate_series(1, 5000) g")
    res.append([len(rows), plain(rows[-1])])
    out["cursor"] = res


async def section_copy(conn, out):
    res = []
    n = await conn.copy_records_to_table(
        "items", records=[(i, f"copy {i}", decimal.Decimal(i) / 4) for i in range(100, 300)],
        columns=["id", "name", "price"])
    res.append(n)
    buf = io.BytesIO()
    res.append(await conn.copy_from_query("SELECT id, name FROM items WHERE id BETWEEN 100 AND 104 ORDER BY id",
                                          output=buf, format="csv"))
    res.append(buf.getvalue().decode())
    buf = io.BytesIO()
    res.append(await conn.copy_from_table("items", output=buf, columns=["id", "price"], format="text"))
    res.append(len(buf.getvalue()))
    src = io.BytesIO(b"400\tfrom stdin\t1.00\n401\tsecond\t\\N\n")
    res.append(await conn.copy_to_table("items", source=src, columns=["id", "name", "price"]))
    try:
        await conn.copy_records_to_table("items", records=[(1, "dup", None)], columns=["id", "name", "price"])
    except asyncpg.PostgresError as e:
        res.append(err(e))
    res.append(plain(await conn.fetchrow("SELECT count(*), sum(price) FROM items")))
    out["copy"] = res


async def section_errors(conn, out):
    res = []
    for q, args in [
        ("SELECT 1/0", ()),
        ("SELECT nosuchcolumn FROM items", ()),
        ("SELECT * FROM nosuchtable", ()),
        ("INSERT INTO items (id, name) VALUES (1, 'dup')", ()),
        ("INSERT INTO items (id, name) VALUES ($1, NULL)", (999,)),
        ("SELECT $1::int", ("12x",)),
        ("SELEC 1", ()),
        ("DO $$ BEGIN RAISE EXCEPTION 'custom' USING DETAIL = 'd', HINT = 'h', ERRCODE = 'P0042'; END $$", ()),
    ]:
        try:
            await conn.execute(q, *args) if args else await conn.execute(q)
        except (asyncpg.PostgresError, asyncpg.DataError) as e:
            res.append(err(e) if isinstance(e, asyncpg.PostgresError) else ["DataError", str(e)])
    res.append(await conn.fetchval("SELECT 'still usable'"))
    out["errors"] = res


async def section_transactions(conn, out):
    res = []
    async with conn.transaction():
        await conn.execute("INSERT INTO items (id, name) VALUES (500, 'outer')")
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO items (id, name) VALUES (501, 'inner')")
                await conn.execute("INSERT INTO items (id, name) VALUES (500, 'dup')")
        except asyncpg.UniqueViolationError as e:
            res.append(e.sqlstate)
        async with conn.transaction():
            await conn.execute("INSERT INTO items (id, name) VALUES (502, 'inner ok')")
    try:
        async with conn.transaction(isolation="serializable", readonly=True):
            res.append(await conn.fetchval("SHOW transaction_isolation"))
            await conn.execute("INSERT INTO items (id, name) VALUES (503, 'ro')")
    except asyncpg.PostgresError as e:
        res.append(err(e))
    res.append(plain(await conn.fetch("SELECT id, name FROM items WHERE id >= 500 ORDER BY id")))
    res.append(conn.is_in_transaction())
    out["transactions"] = res


async def section_notify(conn, out):
    got = []
    done = asyncio.Event()

    def listener(_conn, _pid, channel, payload):
        got.append([channel, payload])
        if len(got) == 2:
            done.set()

    notices = []
    conn.add_log_listener(lambda _c, m: notices.append([type(m).__name__, m.sqlstate, str(m)]))
    await conn.add_listener("larder_chan", listener)
    await conn.execute("NOTIFY larder_chan, 'one'")
    await conn.execute("SELECT pg_notify('larder_chan', 'two')")
    await asyncio.wait_for(done.wait(), 5)
    await conn.remove_listener("larder_chan", listener)
    await conn.execute("DO $$ BEGIN RAISE NOTICE 'note %', 1; RAISE WARNING 'warn'; END $$")
    await conn.execute("SET application_name = 'asyncpg-suite'")
    out["notify"] = got
    out["notices"] = notices
    out["settings"] = [conn.get_settings().application_name, conn.get_settings().server_encoding,
                       conn.get_server_version().major]


async def main():
    url = sys.argv[1]
    conn = await asyncpg.connect(url)
    await conn.execute("""
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE TYPE pair AS (a int, b text);
        CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL,
                            price numeric(10, 2) CHECK (price IS NULL OR price >= 0));
        INSERT INTO items SELECT g, 'item ' || g, g * 1.10 FROM generate_series(1, 10) g;
    """)
    out = {}
    await section_types(conn, out)
    await section_params(conn, out)
    await section_prepared(conn, out)
    await section_cursor(conn, out)
    await section_copy(conn, out)
    await section_errors(conn, out)
    await section_transactions(conn, out)
    await section_notify(conn, out)
    await conn.close()
    json.dump(out, sys.stdout, indent=1, sort_keys=True, default=plain)
    print()


if __name__ == "__main__":
    asyncio.run(main())

"""Reads rows of the type-round-trip table with psycopg 3 and prints every column raw.

Used by tests/tests/pg_cache_types.rs, once directly against Postgres and once through Larder;
the two outputs must be identical. psycopg sends `Parse Bind Describe(portal) Execute Sync`
(libpq's PQsendQueryParams), so unlike tokio-postgres the RowDescription it sees for each
result is the one Larder itself produced: name, type oid, type size and type modifier (the
modifier carries varchar(n) / numeric(p,s)). Values are loaded as raw bytes in text and in
binary format, so nothing is parsed or normalized on the client side.

usage: cache_types.py URL QUERY ID [ID...] [--explain]
       cache_types.py --larder-statements URL
  QUERY uses %s for the id. With --explain, prints "DEST <destination> <reason>" after each
  read (EXPLAIN LAST STATEMENT), which only Larder understands.
"""

import sys

import psycopg
from psycopg.adapt import Loader
from psycopg.pq import Format

OIDS = [
    16, 17, 20, 21, 23, 25, 114, 700, 701, 1042, 1043, 1082, 1083, 1114, 1184, 1700, 2950, 3802,
    1000, 1001, 1005, 1007, 1016, 1009, 199, 1021, 1022, 1014, 1015, 1182, 1183, 1115, 1185,
    1231, 2951, 3807,
]


class RawText(Loader):
    format = Format.TEXT

    def load(self, data):
        return bytes(data)


class RawBinary(Loader):
    format = Format.BINARY

    def load(self, data):
        return bytes(data)


def larder_statements(url):
    """Larder's own statements through libpq's prepared-statement path: `prepare=True` makes
    psycopg send a named Parse + Sync (PQsendPrepare) first, then Bind/Describe/Execute/Sync.
    Prints one line per statement: OK with the row count, or the error."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.cursor()
        for sql in ["EXPLAIN LAST STATEMENT", "SHOW CACHES", "SHOW LARDER STATUS"]:
            for prepare in (False, True):
                try:
                    cur.execute(sql, prepare=prepare)
                    print(f"OK prepare={prepare} {sql}: {len(cur.fetchall())} rows")
                except psycopg.Error as e:
                    print(f"ERROR prepare={prepare} {sql}: {e}".splitlines()[0])


def main():
    if sys.argv[1] == "--larder-statements":
        larder_statements(sys.argv[2])
        return
    args = [a for a in sys.argv[1:] if a != "--explain"]
    explain = "--explain" in sys.argv
    url, query, ids = args[0], args[1], [int(i) for i in args[2:]]
    with psycopg.connect(url, autocommit=True) as conn:
        for oid in OIDS:
            conn.adapters.register_loader(oid, RawText)
            conn.adapters.register_loader(oid, RawBinary)
        cur = conn.cursor()
        for prepare in (False, True):
            for binary in (False, True):
                for i in ids:
                    cur.execute(query, (i,), binary=binary, prepare=prepare)
                    desc = [
                        (d.name, d.type_code, d.internal_size, d.precision, d.scale, d.display_size)
                        for d in cur.description
                    ]
                    rows = cur.fetchall()
                    print(f"id={i} binary={binary} prepare={prepare} description={desc}")
                    for r in rows:
                        for d, v in zip(cur.description, r):
                            shown = "NULL" if v is None else v.hex()
                            print(f"  {d.name}={shown}")
                    if explain:
                        cur.execute("EXPLAIN LAST STATEMENT", prepare=False)
                        dest, reason = (
                            v.decode() if isinstance(v, bytes) else v for v in cur.fetchone()
                        )
                        print(f"DEST {dest} {reason}")


if __name__ == "__main__":
    main()

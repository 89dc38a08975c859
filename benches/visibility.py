"""Commit-to-visible prober for benches/visibility.

Every INTERVAL_MS it writes a unique, increasing value to a probe key directly upstream
(autocommit), notes the time the commit returned, then polls the key through Larder with a
prepared statement (answered by the cache) until the new value shows up. The delay between the
commit returning and the value being read through Larder is the commit-to-visible latency.

Larder re-checks how a session resolves an unqualified table name once a second, and that read
goes upstream (where the new value is always visible); a probe whose final read was answered
upstream says nothing about the cache, so EXPLAIN LAST STATEMENT is asked after each probe's
final read (outside the timed part) and such probes are left out and counted.

The probe's write and read are the kv table's by default; --write-sql, --read-sql and --expect
make it probe any cached query (benches/lobsters: a vote insert seen in a join-and-count).

Prints one line: "p50_ms p99_ms max_ms probes timeouts served_by_cache polls hits_delta upstream"
where polls counts the reads through Larder during the probes, hits_delta the growth of the
cache's hit count meanwhile, and upstream the probes left out.
"""

import argparse
import sys
import time

import psycopg

POLL_TIMEOUT_S = 5.0
LATENCIES_MAX = 1_000_000


def percentile(sorted_vals, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_vals:
        return float("nan")
    rank = max(1, int(round(q / 100.0 * len(sorted_vals) + 0.5)))
    return sorted_vals[min(rank, len(sorted_vals)) - 1]


class Probe:
    """What a probe writes and reads. SQL uses %(key)s and %(n)s (the probe number)."""

    def __init__(self, write_sql, read_sql, expect, column):
        self.write_sql, self.read_sql, self.expect = write_sql, read_sql, expect
        self.column = column

    def read(self, conn, key):
        row = conn.execute(self.read_sql, {"key": key}, prepare=True).fetchone()
        return None if row is None else row[self.column]

    def target(self, writer, key, n):
        """The value a read must reach once probe `n` is visible."""
        if self.expect == "value":
            return n
        return (self.read(writer, key) or 0) + 1


def probe_once(probe, writer, reader, key, value):
    """Probe `key` upstream; return (seconds until Larder serves it or None, polls).

    The seconds are None on a timeout, "upstream" if the final read was not a cache hit."""
    target = probe.target(writer, key, value)
    writer.execute(probe.write_sql, {"key": key, "n": value})
    committed = time.perf_counter()
    deadline = committed + POLL_TIMEOUT_S
    polls = 0
    while True:
        polls += 1
        got = probe.read(reader, key)
        now = time.perf_counter()
        if got is not None and got >= target:
            if not last_was_cache(reader):
                return "upstream", polls
            return now - committed, polls
        if now > deadline:
            return None, polls


def last_was_cache(reader):
    # Not prepared: Larder answers its own statements only when they are not named statements.
    row = reader.execute("EXPLAIN LAST STATEMENT", prepare=False).fetchone()
    return row is not None and row[0] == "cache"


def served_by_cache(probe, reader, key):
    probe.read(reader, key)
    return last_was_cache(reader)


def cache_hits(reader):
    """Total hit count over all caches (SHOW CACHES column `count`)."""
    rows = reader.execute("SHOW CACHES", prepare=False).fetchall()
    return sum(int(r[4]) for r in rows)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--direct", required=True)
    p.add_argument("--through", required=True)
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--interval-ms", type=float, default=10.0)
    p.add_argument("--keys", type=int, default=10, help="probe keys 1..KEYS, used in turn")
    p.add_argument("--key-base", type=int, default=0, help="probe keys are KEY_BASE+1..")
    p.add_argument("--write-sql", default="UPDATE kv SET v = %(n)s WHERE k = %(key)s")
    p.add_argument("--read-sql", default="SELECT v FROM kv WHERE k = %(key)s")
    p.add_argument("--start-sql", default="SELECT coalesce(max(v), 0) FROM kv",
                   help="the probe numbers start after this query's value")
    p.add_argument("--expect", choices=["value", "increment"], default="value",
                   help="value: the read returns the probe number; increment: it grows by one")
    p.add_argument("--read-column", type=int, default=0, help="the read's column to compare")
    args = p.parse_args()
    probe = Probe(args.write_sql, args.read_sql, args.expect, args.read_column)
    first_key = args.key_base + 1

    writer = psycopg.connect(args.direct, autocommit=True)
    reader = psycopg.connect(args.through, autocommit=True, prepare_threshold=0)
    # Warm up: resolve the table name for this session, make sure the reads hit the cache.
    for k in range(first_key, first_key + args.keys):
        probe.read(reader, k)
    if not served_by_cache(probe, reader, first_key):
        print("reads through larder are not served by the cache", file=sys.stderr)
        return 1
    start_value = writer.execute(args.start_sql).fetchone()[0]

    latencies_ms, timeouts, upstream, polls_total = [], 0, 0, 0
    hits_before = cache_hits(reader)
    interval_s = args.interval_ms / 1000.0
    end = time.perf_counter() + args.duration_s
    next_at = time.perf_counter()
    n = 0
    while time.perf_counter() < end and len(latencies_ms) < LATENCIES_MAX:
        n += 1
        key = first_key + n % args.keys
        delay, polls = probe_once(probe, writer, reader, key, start_value + n)
        polls_total += polls
        if delay is None:
            timeouts += 1
        elif delay == "upstream":
            upstream += 1
        else:
            latencies_ms.append(delay * 1000.0)
        next_at += interval_s
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        else:
            next_at = time.perf_counter()
    hits_delta = cache_hits(reader) - hits_before
    ok = served_by_cache(probe, reader, first_key)

    latencies_ms.sort()
    print(
        f"{percentile(latencies_ms, 50):.2f} {percentile(latencies_ms, 99):.2f} "
        f"{(latencies_ms[-1] if latencies_ms else float('nan')):.2f} "
        f"{len(latencies_ms)} {timeouts} {'yes' if ok else 'no'} {polls_total} {hits_delta} {upstream}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

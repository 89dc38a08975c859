# Sourced by scripts/quickstart once Larder is up (DIRECT, THROUGH, PASSWORD, WORK, LARDER_PID in
# scope, sample table `products`). Shows a cache at work: waits for Larder's snapshot, creates a
# cache on the sample data, times the same query directly and through Larder, shows the hit count
# and suggests what to try next. Any failure here only prints a warning: the quickstart goes on.

QC_QUERY="SELECT id, name, price FROM products WHERE category = 'books' ORDER BY price DESC LIMIT 5"
QC_RUNS=500

# qc_status_value NAME: one value of SHOW LARDER STATUS.
qc_status_value() {
    psql -X -At -F '|' "$THROUGH" -c 'SHOW LARDER STATUS' 2>/dev/null | awk -F '|' -v n="$1" '$1 == n {print $2}'
}

qc_wait_snapshot() {
    local i
    for i in $(seq 1 600); do
        if [ "$(qc_status_value 'Snapshot Status')" = Completed ] \
            && [ "$(qc_status_value 'Replication Status')" = Streaming ]; then
            return 0
        fi
        kill -0 "$LARDER_PID" 2>/dev/null || { echo "    larder exited; see $WORK/larder.log" >&2; return 1; }
        sleep 0.1
    done
    echo "    the snapshot did not complete within 60 s" >&2
    return 1
}

# qc_latency_ms URL: average latency of QC_RUNS prepared executions of QC_QUERY, one client.
qc_latency_ms() {
    pgbench -n -M prepared -c 1 -t "$QC_RUNS" -f "$WORK/qc-query.sql" "$1" 2>/dev/null \
        | sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p'
}

qc_main() {
    echo "==> waiting for Larder's initial snapshot"
    qc_wait_snapshot || return 1
    echo "==> creating a cache through Larder:"
    echo "    CREATE CACHE FROM $QC_QUERY"
    psql -X -q -v ON_ERROR_STOP=1 "$THROUGH" -c "CREATE CACHE FROM $QC_QUERY" >/dev/null || return 1
    echo "$QC_QUERY;" >"$WORK/qc-query.sql"

    echo "==> running it $QC_RUNS times directly and through Larder (pgbench, prepared, 1 client)"
    local direct_ms larder_ms
    direct_ms=$(qc_latency_ms "$DIRECT")
    larder_ms=$(qc_latency_ms "$THROUGH")
    [ -n "$direct_ms" ] && [ -n "$larder_ms" ] || { echo "    pgbench failed" >&2; return 1; }
    printf '    average latency  direct to Postgres: %s ms   through Larder (cache): %s ms\n' \
        "$direct_ms" "$larder_ms"

    echo "==> SHOW CACHES (count = cache hits)"
    psql -X -P pager=off "$THROUGH" -c 'SHOW CACHES' || return 1
    cat <<MSG
    Try it: change a price directly in Postgres; the cache follows the replication stream:
        psql "$DIRECT" -c "UPDATE products SET price = 999.99 WHERE id = 4"
    then, in a psql session through Larder (psql "$THROUGH"):
        $QC_QUERY;
        EXPLAIN LAST STATEMENT;
    (a session's first read of a table goes upstream while Larder resolves the table name;
    repeat the query and EXPLAIN LAST STATEMENT says 'cache')
MSG
}

qc_main || echo "warning: the cache demo did not complete; Larder keeps running (log: $WORK/larder.log)" >&2
unset -f qc_main qc_latency_ms qc_wait_snapshot qc_status_value
unset QC_QUERY QC_RUNS

#!/bin/sh
# Regenerates expected.tsv from exprs.txt against a Postgres 15 (UTF-8, C locale, TimeZone
# UTC, DateStyle ISO): ./gen.sh postgresql://user:pw@host:port/db
set -eu
cd "$(dirname "$0")"
url=$1
: > expected.tsv
grep -v '^#' exprs.txt | grep -v '^$' | while IFS= read -r line; do
  expr=${line%% ## *}
  flag=ok
  case "$line" in *"## poison") flag=poison ;; *"## refuse") flag=refuse ;; esac
  out=$(printf '%s\n' "\\pset null <NULL>" "SELECT pg_typeof($expr)::text, $expr;" |
        PGOPTIONS='-c TimeZone=UTC -c DateStyle=ISO,MDY' psql "$url" -X -q -A -t -F '	' -v ON_ERROR_STOP=1 2>/dev/null) || out="<ERROR>	<ERROR>"
  # Huge results (the size-bound cases) are kept short: only their flag matters.
  out=$(printf '%s' "$out" | cut -c1-300)
  printf '%s\t%s\t%s\n' "$expr" "$out" "$flag" >> expected.tsv
done

#!/usr/bin/env bash
# Start (or reuse) a throwaway PostgreSQL server on loopback for the storage tests and print
# its SQLAlchemy URL. Needs Debian's postgresql package; runs the server as user postgres.
set -euo pipefail
DIR="${1:-/tmp/autoprune-pg}"
PORT="${2:-54329}"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
[ -n "$PGBIN" ] || { echo "postgres.sh: PostgreSQL is not installed" >&2; exit 1; }
if ! "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PORT" >/dev/null 2>&1; then
  rm -rf "$DIR" && mkdir -p "$DIR" && chown postgres "$DIR"
  su postgres -s /bin/sh -c "'$PGBIN/initdb' -D '$DIR/data' -A trust -U postgres" >/dev/null
  su postgres -s /bin/sh -c "'$PGBIN/pg_ctl' -D '$DIR/data' -l '$DIR/server.log' -w \
    -o \"-c listen_addresses=127.0.0.1 -p $PORT -k '$DIR'\" start" >/dev/null
  su postgres -s /bin/sh -c "'$PGBIN/createdb' -h 127.0.0.1 -p $PORT autoprune"
fi
echo "postgresql+psycopg2://postgres@127.0.0.1:$PORT/autoprune"

#!/usr/bin/env bash
# A throw-away PostgreSQL cluster on 127.0.0.1 for tests and benchmarks, from Debian's package.
#
#   scripts/postgres.sh install   apt-get install postgresql if no initdb is found
#   scripts/postgres.sh start     initdb (trust auth) in a fresh dir, start, wait until ready
#   scripts/postgres.sh stop      fast shutdown, remove the dir
#   scripts/postgres.sh crash     immediate shutdown (as if the server died), dir kept
#   scripts/postgres.sh resume    start again on the kept dir (crash recovery), wait until ready
#   scripts/postgres.sh status    exit 0 if running
#   scripts/postgres.sh url       print the SQLAlchemy URL of the cluster
#
# Environment: PG_PORT (55432), JOKKO_PG_DIR (/tmp/jokko-pg-$PG_PORT).
# initdb refuses to run as root, so the cluster belongs to the `postgres` user.
set -euo pipefail

PORT=${PG_PORT:-55432}
DIR=${JOKKO_PG_DIR:-/tmp/jokko-pg-$PORT}

log() { echo "postgres.sh: $*" >&2; }

bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n $d && -x $d/initdb ]] && echo "$d"
}

as_pg() {
  if [[ $(id -un) == postgres ]]; then "$@"; else runuser -u postgres -- "$@"; fi
}

install() {
  if bindir >/dev/null; then return 0; fi
  log "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
  bindir >/dev/null || { log "postgresql installed but no initdb found"; exit 1; }
}

running() { [[ -f $DIR/data/postmaster.pid ]] && as_pg "$(bindir)/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; }

start() {
  install
  local bin
  bin=$(bindir)
  if running; then log "already running on port $PORT"; return 0; fi
  rm -rf "$DIR"
  mkdir -p "$DIR"
  chown postgres: "$DIR"
  as_pg "$bin/initdb" -D "$DIR/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 ||
    { cat "$DIR/initdb.log" >&2; exit 1; }
  launch "$bin"
}

launch() {
  as_pg "$1/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 60 \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null ||
    { tail -n 30 "$DIR/postgres.log" >&2; exit 1; }
  log "PostgreSQL up on 127.0.0.1:$PORT (dir $DIR)"
}

crash() {
  if running; then as_pg "$(bindir)/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null; fi
  log "PostgreSQL on port $PORT stopped in immediate mode (dir kept)"
}

resume() {
  [[ -d $DIR/data ]] || { log "no cluster in $DIR to resume"; exit 1; }
  if running; then log "already running on port $PORT"; return 0; fi
  launch "$(bindir)"
}

stop() {
  if running; then as_pg "$(bindir)/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null; fi
  rm -rf "$DIR"
  log "PostgreSQL on port $PORT stopped"
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop ;;
crash) crash ;;
resume) resume ;;
status)
  if running; then echo "running (port $PORT)"; else echo "stopped"; exit 3; fi
  ;;
url) echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres" ;;
*)
  echo "usage: $0 install|start|stop|crash|resume|status|url" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# A real FHIR server for the integration tier: HAPI FHIR's JPA server (FHIR R4B, H2 in memory)
# on 127.0.0.1, run by the project's own launcher (scripts/fhir/src) from Maven Central jars:
# no Docker engine runs on these machines.
#
#   scripts/fhir.sh fetch      resolve the jars (cached in ~/.m2 and $JOKKO_CACHE), compile the
#                              launcher against them
#   scripts/fhir.sh start      start on an empty database, wait until /fhir/metadata answers
#   scripts/fhir.sh stop       SIGTERM, wait for exit (the in-memory database goes with it)
#   scripts/fhir.sh status     exit 0 if running
#
# Environment: FHIR_PORT (8080), JOKKO_FHIR_DIR (/tmp/jokko-fhir-$FHIR_PORT: log, pid, logback
# config), JOKKO_CACHE (~/.cache/jokko), FHIR_HEAP (1g), FHIR_START_TIMEOUT (420 s).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HAPI_VERSION=8.8.0
PORT=${FHIR_PORT:-8080}
DIR=${JOKKO_FHIR_DIR:-/tmp/jokko-fhir-$PORT}
CACHE=${JOKKO_CACHE:-$HOME/.cache/jokko}
HOME_DIR=$CACHE/hapi-fhir-$HAPI_VERSION
LIBS=$HOME_DIR/libs
SRC=$here/fhir/src/main/java
HEAP=${FHIR_HEAP:-1g}
TIMEOUT=${FHIR_START_TIMEOUT:-420}
MAIN=sn.jokko.fhir.FhirServer

log() { echo "fhir.sh: $*" >&2; }

# The launcher's classes live beside the jars, keyed by a checksum of its source and pom: a
# changed launcher is recompiled, an unchanged one is not.
classes_dir() {
  local sum
  sum=$(cat "$here/fhir/pom.xml" $(find "$SRC" -name '*.java' | sort) | cksum | cut -d' ' -f1)
  echo "$HOME_DIR/classes-$sum"
}

fetch() {
  if [[ ! -f $LIBS/.complete ]]; then
    command -v mvn >/dev/null || { log "mvn not found (needs Maven and Java 17)"; exit 1; }
    log "resolving HAPI FHIR $HAPI_VERSION JPA server jars from Maven Central into $LIBS"
    rm -rf "$LIBS" && mkdir -p "$LIBS"
    mvn -q -B -Dstyle.color=never -f "$here/fhir/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIBS"
    touch "$LIBS/.complete"
  fi
  local classes
  classes=$(classes_dir)
  if [[ ! -f $classes/.complete ]]; then
    log "compiling the launcher into $classes"
    rm -rf "$classes" && mkdir -p "$classes"
    # shellcheck disable=SC2046
    javac -nowarn -encoding UTF-8 -d "$classes" -cp "$LIBS/*" $(find "$SRC" -name '*.java')
    touch "$classes/.complete"
  fi
}

pid_of() { [[ -f $DIR/fhir.pid ]] && cat "$DIR/fhir.pid"; }

running() {
  local pid
  pid=$(pid_of) || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

write_config() {
  cat >"$DIR/logback.xml" <<EOF
<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level %logger{36} - %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="OUT"/></root>
  <logger name="sn.jokko" level="INFO"/>
  <logger name="ca.uhn.fhir.jpa.dao" level="INFO"/>
  <logger name="org.springframework.context.support.PostProcessorRegistrationDelegate" level="ERROR"/>
</configuration>
EOF
}

# Ready once the launcher says it listens and a search answers. Not /metadata: HAPI builds the
# CapabilityStatement anew for every call (seconds of CPU), and polls that time out on a loaded
# machine leave it building them. Python is on every machine the project runs on (curl need not
# be).
answers() {
  grep -q "listening on" "$DIR/fhir.log" 2>/dev/null || return 1
  python3 -c 'import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=120).read()
except Exception:
    sys.exit(1)' "http://127.0.0.1:$PORT/fhir/Organization?_count=1" 2>/dev/null
}

start() {
  fetch
  if running; then log "already running on port $PORT (pid $(pid_of))"; return 0; fi
  rm -rf "$DIR"
  mkdir -p "$DIR"
  write_config
  local classes t0=$SECONDS
  classes=$(classes_dir)
  # Output goes to a file: an unread pipe would block the server. C1 only and the serial
  # collector: a test server that starts fast matters more than peak throughput.
  nohup java -Xmx"$HEAP" -Xss1m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dlogback.configurationFile="$DIR/logback.xml" -Djava.io.tmpdir="$DIR" \
    -cp "$LIBS/*:$classes" "$MAIN" "$PORT" >>"$DIR/fhir.log" 2>&1 </dev/null &
  echo $! >"$DIR/fhir.pid"
  local deadline=$((SECONDS + TIMEOUT))
  until answers; do
    if ! running; then
      log "server exited during start-up; last lines of $DIR/fhir.log:"
      tail -n 30 "$DIR/fhir.log" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      log "server did not answer within ${TIMEOUT}s; see $DIR/fhir.log"
      stop
      exit 1
    fi
    sleep 0.5
  done
  log "HAPI FHIR $HAPI_VERSION (R4B) up on http://127.0.0.1:$PORT/fhir after $((SECONDS - t0))s" \
    "(pid $(pid_of), dir $DIR)"
}

stop() {
  if ! running; then rm -f "$DIR/fhir.pid"; return 0; fi
  local pid
  pid=$(pid_of)
  kill -TERM "$pid"
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "server did not stop within 30s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/fhir.pid"
  log "server on port $PORT stopped"
}

case "${1:-}" in
fetch) fetch ;;
start) start ;;
stop) stop ;;
status)
  if running; then echo "running (pid $(pid_of), port $PORT)"; else echo "stopped"; exit 3; fi
  ;;
*)
  echo "usage: $0 fetch|start|stop|status" >&2
  exit 2
  ;;
esac

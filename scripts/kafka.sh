#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, combined broker+controller) on 127.0.0.1,
# built from Maven Central jars: no Docker engine runs on these machines.
#
#   scripts/kafka.sh fetch      resolve the jars (cached in ~/.m2 and $JOKKO_CACHE)
#   scripts/kafka.sh start      wipe + format storage, start, wait until it answers
#   scripts/kafka.sh restart    stop, then start again on the same storage (topics kept)
#   scripts/kafka.sh stop       SIGTERM, wait for exit (storage kept until the next start)
#   scripts/kafka.sh status     exit 0 if running
#
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1),
# JOKKO_KAFKA_DIR (/tmp/jokko-kafka-$KAFKA_PORT: properties, data, log, pid),
# JOKKO_CACHE (~/.cache/jokko), KAFKA_HEAP (1g), KAFKA_START_TIMEOUT (90 s).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KAFKA_VERSION=4.3.1
PORT=${KAFKA_PORT:-9092}
CPORT=${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}
DIR=${JOKKO_KAFKA_DIR:-/tmp/jokko-kafka-$PORT}
CACHE=${JOKKO_CACHE:-$HOME/.cache/jokko}
LIBS=$CACHE/kafka-$KAFKA_VERSION/libs
HEAP=${KAFKA_HEAP:-1g}
TIMEOUT=${KAFKA_START_TIMEOUT:-90}

log() { echo "kafka.sh: $*" >&2; }

fetch() {
  if [[ -f $LIBS/.complete ]]; then return 0; fi
  command -v mvn >/dev/null || { log "mvn not found (needs Maven and Java 17)"; exit 1; }
  log "resolving Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  rm -rf "$LIBS" && mkdir -p "$LIBS"
  mvn -q -B -Dstyle.color=never -f "$here/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIBS"
  touch "$LIBS/.complete"
}

pid_of() { [[ -f $DIR/kafka.pid ]] && cat "$DIR/kafka.pid"; }

running() {
  local pid
  pid=$(pid_of) || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

write_config() {
  mkdir -p "$DIR/data"
  cat >"$DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
log.dirs=$DIR/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
EOF
  cat >"$DIR/log4j2.properties" <<EOF
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = org.apache.kafka
logger.kafka.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

format_storage() {
  local id
  id=$(java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  java -cp "$LIBS/*" -Dlog4j2.configurationFile="$DIR/log4j2.properties" \
    kafka.tools.StorageTool format --standalone -t "$id" -c "$DIR/server.properties" \
    >>"$DIR/kafka.log" 2>&1
}

launch() {
  # Output goes to a file: an unread pipe would block the broker.
  nohup java -Xmx"$HEAP" -Xms256m -cp "$LIBS/*" \
    -Dlog4j2.configurationFile="$DIR/log4j2.properties" -Dkafka.logs.dir="$DIR" \
    kafka.Kafka "$DIR/server.properties" >>"$DIR/kafka.log" 2>&1 </dev/null &
  echo $! >"$DIR/kafka.pid"
  local deadline=$((SECONDS + TIMEOUT))
  until grep -q "Kafka Server started" "$DIR/kafka.log" 2>/dev/null &&
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    if ! running; then
      log "broker exited during start-up; last lines of $DIR/kafka.log:"
      tail -n 30 "$DIR/kafka.log" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      log "broker did not answer within ${TIMEOUT}s; see $DIR/kafka.log"
      stop
      exit 1
    fi
    sleep 0.2
  done
  log "broker up on 127.0.0.1:$PORT (pid $(pid_of), dir $DIR)"
}

start() {
  fetch
  if running; then log "already running on port $PORT (pid $(pid_of))"; return 0; fi
  rm -rf "$DIR"
  mkdir -p "$DIR"
  write_config
  format_storage
  launch
}

stop() {
  if ! running; then rm -f "$DIR/kafka.pid"; return 0; fi
  local pid
  pid=$(pid_of)
  kill -TERM "$pid"
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "broker did not stop within 30s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/kafka.pid"
  log "broker on port $PORT stopped"
}

restart() {
  [[ -f $DIR/server.properties ]] || { log "no storage in $DIR to restart on"; exit 1; }
  stop
  launch
}

case "${1:-}" in
fetch) fetch ;;
start) start ;;
stop) stop ;;
restart) restart ;;
status)
  if running; then echo "running (pid $(pid_of), port $PORT)"; else echo "stopped"; exit 3; fi
  ;;
*)
  echo "usage: $0 fetch|start|stop|restart|status" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# Starts a throw-away Kafka broker, runs `jokko demo` against it, and stops it on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export KAFKA_PORT=${KAFKA_PORT:-19092}
export JOKKO_KAFKA_DIR=${JOKKO_KAFKA_DIR:-/tmp/jokko-demo-kafka-$KAFKA_PORT}
trap 'scripts/kafka.sh stop' EXIT
scripts/kafka.sh start
JOKKO_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT .venv/bin/jokko demo "$@"

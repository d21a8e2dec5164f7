#!/usr/bin/env bash
# Cross-node throughput: a two-node Warren cluster on loopback (127.0.9.1 and 127.0.9.2), the
# same warren-perf load three ways, and the ratio to the local figure.
#
#   local:           queue on A, producer on A, consumer on A
#   consume remote:  queue on A, producer on A, consumer on B (deliveries and acks cross)
#   publish remote:  queue on A, producer on B, consumer on A (publishes and confirms cross)
#
# Usage: benches/cluster.sh [seconds per run, default 10] [extra warren-perf options]
# Needs `cargo build --release -p warren-broker -p warren-perf`. Every process it starts is
# stopped by its pid on exit; it binds only to loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
shift || true
TARGET=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

start() { # name ip
    local conf="$WORK/$1.conf"
    cat > "$conf" <<EOF
listeners.tcp.default = $2:5672
distribution.listener.interface = $2
management.tcp.ip = $2
loopback_users = none
log.console.level = warning
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = warren@127.0.9.1
cluster_formation.classic_config.nodes.2 = warren@127.0.9.2
EOF
    WARREN_NODENAME=warren@$2 WARREN_USE_LONGNAME=true WARREN_ERLANG_COOKIE=bench \
        WARREN_DATA_DIR="$WORK/$1" WARREN_CONFIG_FILE="$conf" "$TARGET/warren" &
    PIDS+=($!)
}
start a 127.0.9.1
start b 127.0.9.2
A=amqp://guest:guest@127.0.9.1:5672/%2F
B=amqp://guest:guest@127.0.9.2:5672/%2F
for _ in $(seq 100); do
    if "$TARGET/warrenctl" -n warren@127.0.9.2 --longnames --erlang-cookie bench \
        cluster_status 2>/dev/null | grep -q "Running Nodes" &&
        [ "$("$TARGET/warrenctl" -n warren@127.0.9.2 --longnames --erlang-cookie bench \
            cluster_status --formatter json | grep -c '"running": true')" = 2 ]; then
        break
    fi
    sleep 0.2
done

rate() { # queue, warren-perf arguments...
    local queue=$1
    shift
    # The queue lives on A in every run: declared there first, empty.
    "$TARGET/warren-perf" --uri "$A" -x 1 -y 0 -C 0 -z 1 -u "$queue" >/dev/null 2>&1 || true
    "$TARGET/warren-perf" --json -z "$SECONDS_PER_RUN" --predeclared -u "$queue" "$@" "${PERF[@]}" |
        grep -o '"consume_rate": *[0-9.]*' | grep -o '[0-9.]*$'
}

PERF=("$@")
LOCAL=$(rate bench-local --uri "$A")
REMOTE_CONSUME=$(rate bench-consume --uri "$A" --uri "$B")
REMOTE_PUBLISH=$(rate bench-publish --uri "$B" --uri "$A")
echo "warren-perf ${PERF[*]} -z $SECONDS_PER_RUN; two nodes, queue on A"
printf '| local (queue, producer, consumer on A) | %.0f msg/s | 1.00 |\n' "$LOCAL"
printf '| consumer on B | %.0f msg/s | %.2f |\n' "$REMOTE_CONSUME" "$(echo "$REMOTE_CONSUME / $LOCAL" | bc -l)"
printf '| producer on B | %.0f msg/s | %.2f |\n' "$REMOTE_PUBLISH" "$(echo "$REMOTE_PUBLISH / $LOCAL" | bc -l)"

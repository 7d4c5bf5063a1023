#!/usr/bin/env bash
# A local Redis Cluster from Debian's redis-server, for the tests, the benchmark and the demo.
#
#   scripts/redis-cluster.sh start DIR [MASTERS [REPLICAS]]   start one (or reuse the one in DIR)
#   scripts/redis-cluster.sh stop DIR                         stop the servers started in DIR
#
# `start` picks free ports at run time (each node's cluster bus is its port + 10000), starts
# MASTERS (default 3) primaries with REPLICAS (default 0) replicas each, daemonised, with their
# configuration, logs and pid files in DIR, joins them with `redis-cli --cluster create`, waits
# until every node says cluster_state:ok, and writes DIR/cluster.env (REDIS_CLUSTER_URL=...)
# and DIR/ports (one port per line) once every replica holds its primary's data. Run again
# while those servers answer, it only prints the URL. Nodes fail over fast (cluster-node-timeout 1000 ms) and the shards that still have a
# primary keep serving while another is down (cluster-require-full-coverage no). Nothing is
# saved to disk. Only servers whose pid files are in DIR are ever stopped.
set -euo pipefail

die() {
    echo "redis-cluster: $*" >&2
    exit 1
}

command=${1:-}
dir=${2:-}
[[ -n $command && -n $dir ]] || die "usage: $0 start|stop DIR [MASTERS [REPLICAS]]"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

stop() {
    local pidfile pid stopping=()
    for pidfile in "$dir"/*.pid; do
        [[ -e $pidfile ]] || continue
        pid=$(cat "$pidfile")
        if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null && stopping+=("$pid")
        fi
        rm -f "$pidfile"
    done
    for pid in "${stopping[@]}"; do # until they are gone and their ports free
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
    done
    rm -f "$dir"/cluster.env "$dir"/ports "$dir"/nodes-*.conf
}

# every node says cluster_state:ok, and every replica has its primary's data (a replica that
# never synchronised cannot be promoted)
healthy() {
    local port
    [[ -s $dir/ports ]] || return 1
    while read -r port; do
        redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
        if redis-cli -p "$port" info replication | grep -q '^role:slave'; then
            redis-cli -p "$port" info replication | grep -q '^master_link_status:up' || return 1
        fi
    done <"$dir/ports"
}

case $command in
stop)
    stop
    exit 0
    ;;
start) ;;
*) die "unknown command $command (start or stop)" ;;
esac

masters=${3:-3}
replicas=${4:-0}
if healthy; then
    cat "$dir/cluster.env"
    exit 0
fi
command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
    die "redis-server and redis-cli are needed (Debian: apt-get install redis-server)"
stop # whatever was left of an earlier cluster in DIR

nodes=$((masters * (1 + replicas)))
# free ports whose cluster bus port (+10000) is free as well, chosen by the OS
mapfile -t ports < <(
    python3 - "$nodes" <<'EOF'
import socket, sys
wanted, found, held = int(sys.argv[1]), [], []
while len(found) < wanted:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    held.append(probe)
    if port + 10000 > 65535:
        continue
    bus = socket.socket()
    try:
        bus.bind(("127.0.0.1", port + 10000))
    except OSError:
        continue
    finally:
        bus.close()
    found.append(port)
print("\n".join(map(str, found)))
EOF
)

for port in "${ports[@]}"; do
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
        --dir "$dir" --pidfile "$dir/$port.pid" --logfile "$dir/$port.log" \
        --cluster-enabled yes --cluster-config-file "nodes-$port.conf" \
        --cluster-node-timeout 1000 --cluster-require-full-coverage no \
        --save "" --appendonly no --repl-diskless-sync-delay 0 ||
        die "redis-server failed on port $port (log: $dir/$port.log)"
done
for port in "${ports[@]}"; do
    for _ in $(seq 100); do
        [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] && break
        sleep 0.05
    done
done

addresses=()
for port in "${ports[@]}"; do addresses+=("127.0.0.1:$port"); done
redis-cli --cluster create "${addresses[@]}" --cluster-replicas "$replicas" --cluster-yes \
    >"$dir/create.log" 2>&1 || die "redis-cli --cluster create failed: $(tail -5 "$dir/create.log")"

printf '%s\n' "${ports[@]}" >"$dir/ports"
for _ in $(seq 200); do
    if healthy; then
        echo "export REDIS_CLUSTER_URL=redis://127.0.0.1:${ports[0]}" >"$dir/cluster.env"
        cat "$dir/cluster.env"
        exit 0
    fi
    sleep 0.05
done
die "the cluster in $dir did not reach cluster_state:ok"

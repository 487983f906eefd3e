#!/usr/bin/env bash
# T6 of the benchmark targets: what an idle daemon costs. 16 endpoints on a veth in a private
# namespace, no traffic; the daemon's utime+stime (/proc/PID/stat) and its threads' on-CPU
# time (schedstat) over a window. Root; everything it makes is removed on exit.
# Usage: bench/scripts/idle-daemon.sh [BIN] [DEMUX] [SECONDS]
set -euo pipefail
BIN=${1:-target/release/xmacvlan}
DEMUX=${2:-xdp}
WINDOW=${3:-10}
BIN=$(realpath "$BIN")
P=xmvidle$$
DIR=$(mktemp -d /tmp/$P.XXXX)
cleanup() {
  [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do ip netns del "$ns"; done
  rm -rf "$DIR"
}
trap cleanup EXIT
ip netns add "$P-h"
ip -n "$P-h" link add v0 type veth peer name v0p
ip -n "$P-h" link set v0 up
ip -n "$P-h" link set v0p up
x() { ip netns exec "$P-h" "$BIN" --data-root "$DIR/data" --control-socket "$DIR/ctl.sock" "$@"; }
x network create -d macvlan --subnet 198.18.30.0/24 -o parent=v0 idle >/dev/null
for i in $(seq 0 15); do
  ip netns add "$P-e$i"
  x endpoint create --network idle --netns "$P-e$i" "c$i" >/dev/null
done
ip netns exec "$P-h" "$BIN" --data-root "$DIR/data" --control-socket "$DIR/ctl.sock" daemon \
  --demux-mode "$DEMUX" --metrics-addr "" --docker-plugin "" --port-dir "$DIR/ports" \
  --log-level warn 2>"$DIR/log" &
PID=$!
sleep 3
cpu() { # ticks of utime+stime, then the summed schedstat ns
  awk '{print $14 + $15}' "/proc/$PID/stat"
  cat /proc/$PID/task/*/schedstat | awk '{s += $1} END {print s}'
}
read -r -d '' T0 N0 < <(cpu; printf '\0') || true
S0=$(date +%s%N)
sleep "$WINDOW"
read -r -d '' T1 N1 < <(cpu; printf '\0') || true
S1=$(date +%s%N)
echo "demux $DEMUX, 16 endpoints idle, ${WINDOW}s: $((T1 - T0)) ticks of utime+stime;" \
  "schedstat $(awk -v n=$((N1 - N0)) -v w=$((S1 - S0)) 'BEGIN {printf "%.3f", 100 * n / w}') % of one core;" \
  "threads: $(ls /proc/$PID/task | wc -l)"
for t in /proc/$PID/task/*; do printf '  %-16s %s\n' "$(cat "$t/comm")" "$(cut -d' ' -f1 "$t/schedstat")"; done

#!/usr/bin/env bash
# Agent CPU while accepted connections are reset, on a host with 2,000
# processes × 200 open descriptors (issue 13's before/after measurement).
#   docs/measure/owners-fd-load.sh AGENT_BIN SCENARIO_BIN [SECS]
# Needs root, redis-server and python3. Prints the agent's CPU ticks (10 ms)
# over SECS, the reset_received lines and how many named redis-server.
set -euo pipefail
agent=$1 scenario=$2 secs=${3:-30}
ns=tcpqfd$$
ip netns add "$ns"; ip -n "$ns" link set lo up
out=$(mktemp -d)
cleanup() {
    kill "$holders" "$redis" 2>/dev/null || true
    wait 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$out"
}
trap cleanup EXIT
# 2,000 processes, 200 descriptors each, idle (bounded: they exit after 300 s).
python3 - <<'PY' &
import os, time, signal
kids = []
for _ in range(2000):
    pid = os.fork()
    if pid == 0:
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(200)]
        time.sleep(300)
        os._exit(0)
    kids.append(pid)
def stop(*_):
    for k in kids:
        try: os.kill(k, signal.SIGKILL)
        except OSError: pass
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
time.sleep(300)
stop()
PY
holders=$!
ip netns exec "$ns" redis-server --port 9311 --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --loglevel warning >/dev/null &
redis=$!
sleep 3
"$agent" trace --output json --syscall-hooks always >"$out/lines" 2>"$out/err" &
a=$!
sleep 3
ticks() { awk '{print $14 + $15}' "/proc/$a/stat"; }
t0=$(ticks)
end=$((SECONDS + secs))
while ((SECONDS < end)); do
    ip netns exec "$ns" "$scenario" abort-client --port 9311 --conns 5 --request PING >/dev/null
    sleep 0.2
done
t1=$(ticks)
kill -INT "$a"; wait "$a" || true
inode=$(stat -L -c %i "/run/netns/$ns")
lines=$(grep -c "\"reset_received\".*\"network.netns\":$inode" "$out/lines" || true)
named=$(grep "\"reset_received\".*\"network.netns\":$inode" "$out/lines" | grep -c '"process.executable.name":"redis-server"' || true)
awk -v t=$((t1 - t0)) -v s="$secs" -v l="$lines" -v n="$named" 'BEGIN {
    printf "agent CPU over %d s: %d ticks (%.1f %% of a core); reset_received lines: %d, naming redis-server: %d\n", s, t, t / s, l, n }'

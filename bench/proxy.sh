#!/usr/bin/env bash
# Proxy benchmark, side by side in one run (recipe: ../shared/design/bench-proxy.md).
# The same two nginx upstreams behind nginx, HAProxy and a localdr balancer (run by the
# agent), each proxy with ONE worker thread pinned to CPU 1, wrk and the upstreams on CPU 0.
# Targets interleave within each repetition, in an order that rotates from one repetition
# to the next; the table shows medians and min–max of
# req/s, p50, p99 and the proxy's CPU µs per request (utime+stime from /proc, all of the
# proxy's processes and threads, divided by the requests wrk completed).
# Usage: REPS=5 DURATION=10 bash bench/proxy.sh [WORKDIR]   (not part of the tests)
# LOCALDR_B=/path/to/another/localdr adds a fifth target, "localdr-b": that build run the
# same way, interleaved with the rest, for an A/B comparison of two builds in one run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
W="${1:-$ROOT/bench/out/proxy}"
REPS="${REPS:-5}"
DURATION="${DURATION:-10}"
bash "$ROOT/scripts/setup.sh"
need=()
for t in nginx haproxy wrk taskset; do command -v "$t" >/dev/null || need+=("$t"); done
if [ "${#need[@]}" -gt 0 ]; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  pkgs=(); for t in "${need[@]}"; do [ "$t" = taskset ] && pkgs+=(util-linux) || pkgs+=("$t"); done
  $sudo_ apt-get install -y -q "${pkgs[@]}" >/dev/null
fi
NGINX="$(command -v nginx)"; HAPROXY="$(command -v haproxy)"
LOCALDR="$ROOT/target/release/localdr"
rm -rf "$W"; mkdir -p "$W"/{up,px,state/balancers,logs}
LOCALDR_B="${LOCALDR_B:-}"
read -r P_UP1 P_UP2 P_NGX P_HAP P_LDR P_LDRB <<<"$(python3 - <<'PY'
import socket
ss=[]
for _ in range(6):
    s=socket.socket(); s.bind(("127.0.0.1",0)); ss.append(s)
print(" ".join(str(s.getsockname()[1]) for s in ss))
PY
)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "$LOCALDR" agent stop --state-dir "$W/state" >/dev/null 2>&1 || true
  [ -z "$LOCALDR_B" ] || "$LOCALDR_B" agent stop --state-dir "$W/state-b" >/dev/null 2>&1 || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Upstreams: one nginx worker, two listeners answering "ok" with X-Upstream.
cat > "$W/up/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $W/up/nginx.pid;
error_log $W/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$P_UP1; location / { add_header X-Upstream $P_UP1; return 200 "ok"; } }
  server { listen 127.0.0.1:$P_UP2; location / { add_header X-Upstream $P_UP2; return 200 "ok"; } }
}
CONF
taskset -c 0 "$NGINX" -p "$W/up" -c "$W/up/nginx.conf" & PIDS+=($!)

# nginx proxy.
cat > "$W/px/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $W/px/nginx.pid;
error_log $W/px/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  upstream pool {
    server 127.0.0.1:$P_UP1 max_fails=3 fail_timeout=10s;
    server 127.0.0.1:$P_UP2 max_fails=3 fail_timeout=10s;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$P_NGX;
    location / {
      proxy_pass http://pool;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 2;
    }
  }
}
CONF
taskset -c 1 "$NGINX" -p "$W/px" -c "$W/px/nginx.conf" & PIDS+=($!); NGX_MASTER=$!

# HAProxy.
cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 60s
  timeout client 60s
  timeout server 60s
  http-reuse safe
  retries 2
  option redispatch
frontend fe
  bind 127.0.0.1:$P_HAP
  default_backend pool
backend pool
  balance roundrobin
  option httpchk GET /
  default-server check inter 2s rise 2 fall 3 observe layer7 error-limit 10 on-error mark-down
  server a 127.0.0.1:$P_UP1
  server b 127.0.0.1:$P_UP2
CONF
taskset -c 1 "$HAPROXY" -db -f "$W/haproxy.cfg" >"$W/haproxy.log" 2>&1 & PIDS+=($!); HAP_PID=$!

# localdr: a balancer spec in a state dir, run by the agent (one thread per balancer).
cat > "$W/state/balancers/bench.json" <<CONF
{
  "api_version": 1,
  "name": "bench",
  "listen": "127.0.0.1:$P_LDR",
  "targets": [ { "address": "127.0.0.1:$P_UP1", "weight": 1 }, { "address": "127.0.0.1:$P_UP2", "weight": 1 } ],
  "algorithm": "round-robin",
  "healthchecks": {
    "active": {
      "type": "http", "http_path": "/", "timeout": "1s",
      "healthy": { "interval": "2s", "successes": 2, "http_statuses": [200, 302] },
      "unhealthy": { "interval": "2s", "http_failures": 3, "tcp_failures": 3, "timeouts": 3, "http_statuses": [500, 502, 503, 504] }
    },
    "passive": {
      "healthy": { "interval": "0s", "successes": 5 },
      "unhealthy": { "interval": "0s", "http_failures": 5, "tcp_failures": 2, "timeouts": 2, "http_statuses": [500, 502, 503, 504] },
      "base_ejection_time": "30s",
      "max_ejection_percent": 50
    }
  },
  "retries": 2,
  "timeouts": { "connect": "60s", "read": "60s", "write": "60s" },
  "admin_listen": "127.0.0.1:0",
  "access_log": ${LOCALDR_ACCESS_LOG:-false}
}
CONF
taskset -c 1 "$LOCALDR" agent --state-dir "$W/state" >"$W/agent.log" 2>&1 & PIDS+=($!); LDR_PID=$!
TARGETS=(direct nginx haproxy localdr); LDRB_PID=""
if [ -n "$LOCALDR_B" ]; then
  mkdir -p "$W/state-b/balancers"
  sed "s/127.0.0.1:$P_LDR/127.0.0.1:$P_LDRB/" "$W/state/balancers/bench.json" >"$W/state-b/balancers/bench.json"
  taskset -c 1 "$LOCALDR_B" agent --state-dir "$W/state-b" >"$W/agent-b.log" 2>&1 & PIDS+=($!); LDRB_PID=$!
  TARGETS+=(localdr-b)
fi

up() { python3 - "$1" <<'PY'
import socket, sys, time
end = time.time() + 20
while time.time() < end:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close(); sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
PY
}
for p in $P_UP1 $P_UP2 $P_NGX $P_HAP $P_LDR ${LOCALDR_B:+$P_LDRB}; do up "$p" || { echo "nothing listens on $p"; tail "$W"/*.log "$W"/*/error.log; exit 1; }; done
sleep 3  # HAProxy and localdr: first active checks pass

# Every proxy must alternate between both upstreams.
for spec in "nginx:$P_NGX" "haproxy:$P_HAP" "localdr:$P_LDR" ${LOCALDR_B:+"localdr-b:$P_LDRB"}; do
  name="${spec%%:*}"; port="${spec##*:}"
  seen=$(for _ in 1 2 3 4 5 6; do curl -s -D - -o /dev/null "http://127.0.0.1:$port/" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-upstream"{print $2}'; done | sort -u | tr '\n' ' ')
  [ "$(wc -w <<<"$seen")" = 2 ] || { echo "$name does not alternate between the upstreams (saw: $seen)"; exit 1; }
done
echo "every proxy alternates between both upstreams"

# Wait (bounded) for a quiet machine: ≥ 90% idle over a second.
idle() { python3 - <<'PY'
import time
def t():
    v=list(map(int, open("/proc/stat").readline().split()[1:]))
    return v[3]+v[4], sum(v)
a=t(); time.sleep(1); b=t()
print(int(100*(b[0]-a[0])/max(1,b[1]-a[1])))
PY
}
for _ in $(seq 30); do i=$(idle); [ "$i" -ge 90 ] && break; done
echo "machine idle: ${i}% (load average $(cut -d' ' -f1-3 /proc/loadavg)); $(nproc) cores; $REPS repetitions of ${DURATION}s"

TCK=$(getconf CLK_TCK)
# Ticks the hypervisor took from CPUs 0 and 1 ("steal" in /proc/stat): a repetition run
# while the host was busy elsewhere shows it here, whichever target it hit.
steal() { awk '$1=="cpu0"||$1=="cpu1"{s+=$9} END{print s}' /proc/stat; }
# CPU ticks of a process and its children processes: "utime stime".
ticks() {
  local u=0 s=0 p
  for p in "$@" $(for q in "$@"; do pgrep -P "$q" || true; done); do
    [ -r "/proc/$p/stat" ] || continue
    read -r pu ps < <(awk '{sub(/.*\) /, ""); print $12, $13}' "/proc/$p/stat")
    u=$((u + pu)); s=$((s + ps))
  done
  echo "$u $s"
}
declare -A PIDOF=([direct]="" [nginx]="$NGX_MASTER" [haproxy]="$HAP_PID" [localdr]="$LDR_PID" [localdr-b]="$LDRB_PID")
declare -A PORT=([direct]="$P_UP1" [nginx]="$P_NGX" [haproxy]="$P_HAP" [localdr]="$P_LDR" [localdr-b]="$P_LDRB")
RES="$W/results.txt"; : > "$RES"
for rep in $(seq "$REPS"); do
  # The order rotates by one each repetition: a target that always ran in the same slot
  # (after the same peer, at the same phase of the machine's own noise) was measured in
  # conditions its peers never had. Session 15 measured one build at 0.86x the
  # requests/s of another in fixed order, and at 1.01x with the order alternated.
  n=${#TARGETS[@]}; k=$(( (rep - 1) % n ))
  ORDER=("${TARGETS[@]:k}" "${TARGETS[@]:0:k}")
  for t in "${ORDER[@]}"; do
    url="http://127.0.0.1:${PORT[$t]}/"
    taskset -c 0 wrk -t1 -c32 -d3s "$url" >/dev/null
    before="0 0"; [ -n "${PIDOF[$t]}" ] && before=$(ticks ${PIDOF[$t]}); st0=$(steal)
    out=$(taskset -c 0 wrk -t1 -c32 -d"${DURATION}s" --latency "$url")
    after="0 0"; [ -n "${PIDOF[$t]}" ] && after=$(ticks ${PIDOF[$t]}); st1=$(steal)
    read -r bu bs <<<"$before"; read -r au as <<<"$after"
    python3 - "$t" "$rep" "$((au - bu))" "$((as - bs))" "$TCK" "$out" "$((st1 - st0))" "$DURATION" >>"$RES" <<'PY'
import re, sys
t, rep, du, ds, tck, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
# Stolen share of the two CPUs' time over the run, percent.
stolen = 100 * int(sys.argv[7]) / int(sys.argv[5]) / (2 * float(sys.argv[8]))
dt = du + ds
def ms(s):
    v = float(re.match(r"[\d.]+", s).group()); u = s[len(re.match(r"[\d.]+", s).group()):]
    return v * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[u]
reqs = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", out).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", out).group(1))
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
sock = re.search(r"Socket errors: (.*)", out)
per = lambda ticks: ticks / tck * 1e6 / reqs if t != "direct" else float("nan")
print(t, rep, reqs, rps, p50, p99, per(dt), errs.group(1) if errs else 0, (sock.group(1).replace(" ", "") if sock else "-"), per(du), per(ds), f"{stolen:.1f}")
PY
    tail -n 1 "$RES" | awk '{printf "  rep %s %-9s %9.0f req/s  p50 %.2f ms  p99 %.2f ms  cpu %.1f us/req (user %.1f, sys %.1f)  non-2xx %s  socket errors %s  stolen %s%%\n", $2, $1, $4, $5, $6, $7, $10, $11, $8, $9, $12}'
  done
done

python3 - "$RES" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for t, rep, reqs, rps, p50, p99, cpu, non2xx, sock, user, sys_, stolen in rows:
    by.setdefault(t, []).append((float(rps), float(p50), float(p99), float(cpu), int(non2xx), float(user), float(sys_), float(stolen)))
def col(t, i): return [r[i] for r in by[t]]
def med(t, i): return statistics.median(col(t, i))
def rng(t, i, f): v = col(t, i); return f"{f.format(min(v))}–{f.format(max(v))}"
print()
print(f"| target | req/s (median, min–max) | p50 ms | p99 ms | proxy CPU µs/req | user / sys µs | non-2xx | stolen % (max) |")
print(f"|---|---|---|---|---|---|---|---|")
for t in [t for t in ["direct", "nginx", "haproxy", "localdr", "localdr-b"] if t in by]:
    cpu = "—" if t == "direct" else f"{med(t,3):.1f} ({rng(t,3,'{:.1f}')})"
    split = "—" if t == "direct" else f"{med(t,5):.1f} / {med(t,6):.1f}"
    print(f"| {t} | {med(t,0):,.0f} ({rng(t,0,'{:,.0f}')}) | {med(t,1):.2f} | {med(t,2):.2f} ({rng(t,2,'{:.2f}')}) | {cpu} | {split} | {sum(col(t,4))} | {med(t,7):.1f} ({max(col(t,7)):.1f}) |")
print()
for peer in ["nginx", "haproxy"]:
    print(f"localdr / {peer}: req/s {med('localdr',0)/med(peer,0):.2f}×, p99 {med('localdr',2)/med(peer,2):.2f}×, CPU µs/req {med('localdr',3)/med(peer,3):.2f}×")
# The same ratios taken within each repetition (the targets of one repetition run within a
# minute of each other), then the median: p99 moves more between repetitions than between
# proxies, and pairing takes the repetition's own conditions out of the comparison.
print()
for peer in ["nginx", "haproxy"]:
    pair = lambda i: statistics.median(a[i] / b[i] for a, b in zip(by["localdr"], by[peer]))
    each = " ".join(f"{a[2] / b[2]:.2f}" for a, b in zip(by["localdr"], by[peer]))
    print(f"paired by repetition, localdr / {peer}: req/s {pair(0):.2f}×, p99 {pair(2):.2f}× (each: {each}), CPU µs/req {pair(3):.2f}×")
if "localdr-b" in by:
    print(f"localdr / localdr-b: req/s {med('localdr',0)/med('localdr-b',0):.2f}×, p99 {med('localdr',2)/med('localdr-b',2):.2f}×, CPU µs/req {med('localdr',3)/med('localdr-b',3):.2f}×")
PY

#!/usr/bin/env bash
# The sidecar proxy beside HAProxy and nginx, in one run, in front of the same stand-in upstream
# (breakerbox stand-in), all on 127.0.0.1; figures go to docs/performance.md.
#
#   benches/proxy.sh            # needs wrk, haproxy and nginx (Debian: wrk haproxy nginx-light)
#
# 1. Throughput and latency at 64 connections (wrk, 2 threads; ROUNDS interleaved rounds,
#    default 5, of DURATION seconds each, default 4; medians): direct to the stand-in, then through breakerbox, HAProxy and nginx. At 64 connections
#    the stand-in itself saturates, so a proxy in front (which queues) can show a lower p99 than
#    the direct run: the latency a proxy adds is measured again at 1 connection, where nothing
#    queues, as each proxy's p99 minus the direct one's.
# 2. A dead upstream: 200 requests in a row that the upstream answers 500. Reported: how many
#    reached it through breakerbox (failure_threshold 5: it stops forwarding after 5) and
#    through HAProxy (observe layer7, error-limit 5, on-error mark-down: its nearest thing).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-4}
for tool in wrk haproxy nginx curl; do
    command -v "$tool" >/dev/null || { echo "benches/proxy.sh: $tool is needed (apt-get install wrk haproxy nginx-light curl)"; exit 2; }
done
cargo build --release --quiet --bin breakerbox
bin=target/release/breakerbox
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

UP=127.0.0.1:18181 BB=127.0.0.1:18182 HA=127.0.0.1:18183 NG=127.0.0.1:18184
"$bin" stand-in --bind "$UP" --threads 1 >"$work/standin.log" 2>&1 & pids+=($!)

cat >"$work/bb.toml" <<EOF
[services.stripe]
upstream = "http://$UP"
failure_threshold = 5
timeout = "60s"
EOF
"$bin" proxy --bind "$BB" ${PROXY_THREADS:+--threads $PROXY_THREADS} --db "$work/bb.db" --config "$work/bb.toml" >"$work/bb.log" 2>&1 & pids+=($!)

cat >"$work/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 4096
defaults
    mode http
    timeout connect 3s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind $HA
    default_backend be
backend be
    http-reuse always
    server up $UP maxconn 1024 check inter 60s observe layer7 error-limit 5 on-error mark-down
EOF
haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 & pids+=($!)

mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx;
    proxy_temp_path $work/nginx;
    upstream up { server $UP; keepalive 128; }
    server {
        listen $NG;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx.conf" >"$work/nginx.log" 2>&1 & pids+=($!)

# Ready when each answers.
for url in "http://$UP/status/200" "http://$BB/stripe/status/200" "http://$HA/status/200" "http://$NG/status/200"; do
    for _ in $(seq 100); do curl -sf -o /dev/null "$url" && break; sleep 0.1; done
    curl -sf -o /dev/null "$url" || { echo "not answering: $url"; cat "$work"/*.log; exit 1; }
done

# wrk's "Requests/sec" and its 99% latency in ms, appended to $work/results<conns>.
run() {
    local name=$1 url=$2 conns=$3 out
    out=$(wrk -t"$((conns < 2 ? 1 : 2))" -c"$conns" -d"${DURATION}s" --latency "$url")
    local rps p99
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}' <<<"$out")
    echo "$name $rps $p99" >>"$work/results$conns"
}
# Medians over the rounds, per target: name, req/s, p99 ms.
medians() {
    for name in direct breakerbox haproxy nginx; do
        rps=$(awk -v n="$name" '$1 == n {print $2}' "$1" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
        p99=$(awk -v n="$name" '$1 == n {print $3}' "$1" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
        echo "$name $rps $p99"
    done
}
# Rounds interleave the targets, so a slow moment of the machine falls on all of them alike.
ROUNDS=${ROUNDS:-5}
for conns in 64 1; do
    for round in $(seq "$ROUNDS"); do
        run direct "http://$UP/status/200" "$conns"
        run breakerbox "http://$BB/stripe/status/200" "$conns"
        run haproxy "http://$HA/status/200" "$conns"
        run nginx "http://$NG/status/200" "$conns"
    done
    medians "$work/results$conns" >"$work/median$conns"
done
echo "== GET /status/200 (a 40-byte JSON answer): medians of $ROUNDS interleaved rounds of ${DURATION} s"
echo "   64 connections                      1 connection"
join "$work/median64" "$work/median1" | awk '{printf "%-11s %9.0f req/s  p99 %6.2f ms   %8.0f req/s  p99 %6.3f ms\n", $1, $2, $3, $4, $5}'
join "$work/median64" "$work/median1" | awk '
    {rps[$1]=$2; p99[$1]=$3; p1[$1]=$5}
    END {
        printf "throughput at 64, breakerbox / haproxy: %.2f (goal >= 0.80); nginx / haproxy: %.2f\n", rps["breakerbox"]/rps["haproxy"], rps["nginx"]/rps["haproxy"];
        printf "p99 at 64, breakerbox / haproxy: %.2f\n", p99["breakerbox"]/p99["haproxy"];
        printf "p99 added over direct at 1 connection: breakerbox %.3f ms, haproxy %.3f ms, nginx %.3f ms; breakerbox / haproxy: %.2f (goal <= 1.25)\n",
            p1["breakerbox"]-p1["direct"], p1["haproxy"]-p1["direct"], p1["nginx"]-p1["direct"],
            (p1["breakerbox"]-p1["direct"])/(p1["haproxy"]-p1["direct"]);
    }'

# The stand-in's request count, read directly.
seq_now() { curl -s -D - -o /dev/null "http://$UP/status/200" | awk -F': ' 'tolower($1)=="x-standin-seq" {print $2+0}'; }
dead() {
    local name=$1 url=$2 before after codes
    before=$(seq_now)
    codes=$(for _ in $(seq 200); do curl -s -o /dev/null -w '%{http_code}\n' "$url"; done | sort | uniq -c | awk '{printf "%s×%s ", $1, $2}')
    after=$(seq_now)
    echo "$name: $((after - before - 1)) of 200 requests reached the failing upstream (answers: $codes)"
}
echo "== the upstream answers 500: 200 requests in a row"
dead breakerbox "http://$BB/stripe/status/500"
dead haproxy "http://$HA/status/500"

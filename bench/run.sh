#!/usr/bin/env bash
# Performance benchmark of the relay (PRODUCT.md section 7). See bench/README.md.
#
#   bash bench/run.sh [all|ingest|forward|rate|rss]...
#
# Environment: BENCH_DURATION (wrk seconds, 10), BENCH_CONNECTIONS (64),
# BENCH_DRAIN (records for the drain, 50000), BENCH_DRAIN_CONCURRENCY ("16 256"),
# BENCH_RSS_RECORDS (1000000), BENCH_TMP (temp parent dir, default /tmp; must be a real disk),
# CARGO_TARGET_DIR as usual. Everything listens on 127.0.0.1 only, every process started
# here is stopped at the end and the temp dir is removed.
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNECTIONS:-64}
DRAIN_N=${BENCH_DRAIN:-50000}
DRAIN_CONC=${BENCH_DRAIN_CONCURRENCY:-16 256}
RSS_N=${BENCH_RSS_RECORDS:-1000000}
SECTIONS=${*:-all}
TARGET=${CARGO_TARGET_DIR:-target}

want() { [[ " $SECTIONS " == *" all "* || " $SECTIONS " == *" $1 "* ]]; }

if want ingest || want rss; then
  if ! command -v wrk >/dev/null; then
    echo "wrk is not installed. Install it with:  sudo apt-get install -y wrk   (Debian/Ubuntu)" >&2
    echo "or run only the sections without it:    bash bench/run.sh forward rate" >&2
    exit 2
  fi
fi

echo "== building (release)"
cargo build --release --quiet --bin postback-relay
RELAY="$TARGET/release/postback-relay"
BENCH=$(cargo bench --bench relay --no-run --message-format=json 2>/dev/null \
  | grep '"kind":\["bench"\]' | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
[[ -x "$BENCH" ]] || { echo "could not find the bench binary (cargo bench --bench relay --no-run)" >&2; exit 1; }

TMP=$(mktemp -d "${BENCH_TMP:-/tmp}/relay-bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
mkdir -p "$TMP/rules"
cp rules/keitaro.toml "$TMP/rules/"
RESULTS="$TMP/results"
: >"$RESULTS"
row() { printf '%s\n' "$*" | tee -a "$RESULTS"; }

# The cost of one synced 4 KiB write right now (other work on the machine changes it).
fsync_probe() {
  local out
  out=$(dd if=/dev/zero of="$TMP/fsync-probe" bs=4k count=200 oflag=dsync 2>&1 | tail -1)
  rm -f "$TMP/fsync-probe"
  awk -v s="$(echo "$out" | sed -E 's/.* copied, ([0-9.]+) s.*/\1/')" 'BEGIN { printf "%.0f", s / 200 * 1e6 }'
}

# Starts a bench server ($1 = bare|upstream|floor, then its arguments before ADDR) on a free
# port; sets SERVER_ADDR. (Not run in a command substitution: the pid must reach PIDS of this
# shell.)
start_server() {
  local kind=$1 out="$TMP/$1.out"
  "$BENCH" "$@" 127.0.0.1:0 900 >"$out" 2>&1 &
  PIDS+=($!)
  SERVER_ADDR=""
  for _ in $(seq 100); do
    grep -q '^listening ' "$out" 2>/dev/null && break
    sleep 0.05
  done
  SERVER_ADDR=$(grep '^listening ' "$out" | cut -d' ' -f2)
  [[ -n "$SERVER_ADDR" ]] || { echo "the $kind server did not start:"; cat "$out"; exit 1; }
}

# Starts the relay binary on store dir $1 (log in $1.log); sets RELAY_PID and RELAY_ADDR.
start_relay() {
  local store=$1 log="$1.log"
  RELAY__STORE__PATH="$store" RELAY__RULES__DIR="$TMP/rules" \
    RELAY__SCALEO__BASE_URL="http://$UPSTREAM" NO_COLOR=1 \
    "$RELAY" serve --config bench/relay.toml 2>"$log" &
  RELAY_PID=$!
  PIDS+=($RELAY_PID)
  RELAY_ADDR=""
  for _ in $(seq 200); do
    RELAY_ADDR=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -o 'ingest_addr=[0-9.:]*' | head -1 | cut -d= -f2 || true)
    [[ -n "$RELAY_ADDR" ]] && break
    sleep 0.05
  done
  [[ -n "$RELAY_ADDR" ]] || { echo "the relay did not start:"; cat "$log"; exit 1; }
}

stop_relay() {
  kill "$RELAY_PID" 2>/dev/null || true
  wait "$RELAY_PID" 2>/dev/null || true
}

# wrk against http://$1 for $2 seconds; prints "req/s p99_ms errors".
run_wrk() {
  local addr=$1 secs=$2 out
  out=$(wrk -t1 -c"$CONNS" -d"${secs}s" --latency -s bench/postback.lua "http://$addr" 2>&1)
  echo "$out" >>"$TMP/wrk.log"
  local rps p99 errs
  rps=$(echo "$out" | awk '/^Requests\/sec:/ { printf "%.0f", $2 }')
  p99=$(echo "$out" | awk '$1 == "99%" { v = $2;
      if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
      else if (v ~ /ms$/) { sub(/ms$/, "", v) }
      else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
      printf "%.2f", v }')
  errs=$(echo "$out" | awk '/Non-2xx/ { n += $NF } /Socket errors/ { n += 1 } END { print n + 0 }')
  echo "$rps $p99 $errs"
}

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== one synced 4 KiB write: $(fsync_probe) us"
start_server upstream
UPSTREAM=$SERVER_ADDR

if want ingest; then
  echo "== ingest: wrk -t1 -c$CONNS -d${DUR}s --latency -s bench/postback.lua (2 s warm-up each)"
  start_server bare
  BARE=$SERVER_ADDR
  run_wrk "$BARE" 2 >/dev/null
  read -r b_rps b_p99 b_err < <(run_wrk "$BARE" "$DUR")
  start_server floor "$TMP/floor-store"
  FLOOR=$SERVER_ADDR
  run_wrk "$FLOOR" 2 >/dev/null
  read -r f_rps f_p99 f_err < <(run_wrk "$FLOOR" "$DUR")
  start_relay "$TMP/ingest-store"
  run_wrk "$RELAY_ADDR" 2 >/dev/null
  read -r r_rps r_p99 r_err < <(run_wrk "$RELAY_ADDR" "$DUR")
  stop_relay
  stored=$("$BENCH" counts "$TMP/ingest-store")
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
  row "ingest  bare hyper 204          : $b_rps req/s, p99 $b_p99 ms, errors $b_err"
  row "ingest  floor (durable insert)  : $f_rps req/s, p99 $f_p99 ms, errors $f_err"
  row "ingest  relay (durable, fwd on) : $r_rps req/s, p99 $r_p99 ms, errors $r_err"
  row "ingest  ratio relay/bare        : $(ratio "$r_rps" "$b_rps") (target >= 0.5), p99 target < 5 ms"
  row "ingest  ratio floor/bare        : $(ratio "$f_rps" "$b_rps") (hyper + one group-committed SQLite insert, nothing else)"
  row "ingest  ratio relay/floor       : $(ratio "$r_rps" "$f_rps")"
  row "ingest  store after the runs    : $stored"
fi

if want forward; then
  for c in $DRAIN_CONC; do
    echo "== forward: drain $DRAIN_N records, rate limit off, concurrency $c"
    row "forward $("$BENCH" drain "$DRAIN_N" "$c" 2>/dev/null)"
  done
fi

if want rate; then
  echo "== rate: 50/s burst 1 for 5 s (upstream enforces it and answers 429 over it)"
  row "rate    $("$BENCH" rate 50 1 5 2>/dev/null)"
  row "rate    $("$BENCH" rate 50 5 5 2>/dev/null)"
fi

if want rss; then
  rss_of() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
  hwm_of() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
  for n in 0 "$RSS_N"; do
    echo "== rss: relay with $n queued postbacks (forwarding paused by an operator pause)"
    store="$TMP/rss-$n"
    fill=$("$BENCH" fill "$store" "$n")
    echo "   $fill"
    db=$(du -sm "$store" | cut -f1)
    start_relay "$store"
    sleep 1
    idle=$(rss_of "$RELAY_PID")
    read -r rps _ _ < <(run_wrk "$RELAY_ADDR" 3)
    sleep 1
    loaded=$(rss_of "$RELAY_PID")
    hwm=$(hwm_of "$RELAY_PID")
    stop_relay
    row "rss     $n queued (store ${db} MiB): RSS idle $idle MiB, after 3 s of ingest ($rps req/s) $loaded MiB, peak $hwm MiB"
    if [[ "$n" != 0 ]]; then row "store   $fill"; fi
    rm -rf "$store" "$store.log"
  done
fi

echo "== one synced 4 KiB write: $(fsync_probe) us"
echo
echo "== results"
cat "$RESULTS"

#!/usr/bin/env bash
# Performance benchmark of the relay (the targets in bench/README.md). See bench/README.md.
#
#   bash bench/run.sh [all|ingest|forward|rate|rss|pg]...
#
# Environment: BENCH_DURATION (wrk seconds, 10), BENCH_CONNECTIONS (64),
# BENCH_DRAIN (records for the drain, 50000), BENCH_DRAIN_CONCURRENCY ("16 256"),
# BENCH_RSS_RECORDS (1000000), BENCH_TMP (temp parent dir, default /tmp; must be a real disk),
# BENCH_PG_TWO (1: the pg section also runs two relays on one database; 0 skips it),
# BENCH_PG_OPTS (server settings of the pg section, "-c backend_flush_after=256kB"; empty:
# initdb's defaults), BENCH_PG_WARMUP (seconds of ingest that warm the new server's WAL up
# before the pg section measures, 30),
# BENCH_ROUNDS (3: ingest and pg measure their servers in turn this many times; every ratio
# is taken within a round and the median is reported),
# CARGO_TARGET_DIR as usual. Everything listens on 127.0.0.1 only, every process started
# here (and the throwaway PostgreSQL server of the pg section) is stopped at the end and the
# temp dirs are removed.
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNECTIONS:-64}
DRAIN_N=${BENCH_DRAIN:-50000}
DRAIN_CONC=${BENCH_DRAIN_CONCURRENCY:-16 256}
RSS_N=${BENCH_RSS_RECORDS:-1000000}
PG_TWO=${BENCH_PG_TWO:-1}
PG_OPTS=${BENCH_PG_OPTS--c backend_flush_after=256kB}
PG_WARMUP=${BENCH_PG_WARMUP:-30}
ROUNDS=${BENCH_ROUNDS:-3}
SECTIONS=${*:-all}
TARGET=${CARGO_TARGET_DIR:-target}

want() { [[ " $SECTIONS " == *" all "* || " $SECTIONS " == *" $1 "* ]]; }

if want ingest || want rss || want pg; then
  if ! command -v wrk >/dev/null; then
    echo "wrk is not installed. Install it with:  sudo apt-get install -y wrk   (Debian/Ubuntu)" >&2
    echo "or run only the sections without it:    bash bench/run.sh forward rate" >&2
    exit 2
  fi
fi

# The pg section's server binaries (initdb, pg_ctl): PATH first, then Debian's versioned
# directories, as tests/it/support/pg.rs looks for them.
PG_BIN=""
if want pg; then
  for d in $(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)") \
    $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then PG_BIN=$d; break; fi
  done
  if [[ -z "$PG_BIN" ]]; then
    echo "PostgreSQL server binaries (initdb, pg_ctl) were found neither on PATH nor under" >&2
    echo "/usr/lib/postgresql/*/bin. Install them with:  sudo apt-get install -y postgresql" >&2
    echo "(Debian/Ubuntu; the section was measured with PostgreSQL 15) or run the other sections." >&2
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
PG_DIR=""
cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && wait "$p" 2>/dev/null || true; done
  if [[ -n "$PG_DIR" ]]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
  rm -rf "$TMP"
}
# PostgreSQL refuses to run as root: its commands run as the postgres user then.
as_postgres() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
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

# Starts the relay binary on store dir $1 (log in $1.log), or on the PostgreSQL database at
# URL $2 when given; sets RELAY_PID and RELAY_ADDR.
start_relay() {
  local store=$1 log="$1.log"
  local -a url=()
  if [[ -n "${2:-}" ]]; then url=("RELAY__STORE__URL=$2"); fi
  env "${url[@]}" RELAY__STORE__PATH="$store" RELAY__RULES__DIR="$TMP/rules" \
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
  echo "$out" >>"${BENCH_WRK_LOG:-$TMP/wrk.log}"
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

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# The median of the numbers given (the middle one; the mean of the two middle ones).
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# One wrk measurement of the SQLite relay on a fresh store $1 (warm-up first); sets r_rps,
# r_p99, r_err and r_stored (the store's counts after it). Not run in a command
# substitution, as start_server.
measure_sqlite_relay() {
  start_relay "$1"
  run_wrk "$RELAY_ADDR" 2 >/dev/null
  read -r r_rps r_p99 r_err < <(run_wrk "$RELAY_ADDR" "$DUR")
  stop_relay
  r_stored=$("$BENCH" counts "$1")
  rm -rf "$1" "$1.log"
}

if want ingest; then
  echo "== ingest: wrk -t1 -c$CONNS -d${DUR}s --latency -s bench/postback.lua (2 s warm-up each), $ROUNDS rounds of bare, floor, relay"
  start_server bare
  BARE=$SERVER_ADDR
  rf=() rb=() fb=() rp=() rr=()
  for round in $(seq "$ROUNDS"); do
    run_wrk "$BARE" 2 >/dev/null
    read -r b_rps b_p99 b_err < <(run_wrk "$BARE" "$DUR")
    start_server floor "$TMP/floor-store-$round"
    FLOOR_PID=${PIDS[-1]}
    run_wrk "$SERVER_ADDR" 2 >/dev/null
    read -r f_rps f_p99 f_err < <(run_wrk "$SERVER_ADDR" "$DUR")
    kill "$FLOOR_PID" 2>/dev/null || true
    wait "$FLOOR_PID" 2>/dev/null || true
    rm -rf "$TMP/floor-store-$round"
    measure_sqlite_relay "$TMP/ingest-store"
    row "ingest  round $round: bare $b_rps req/s (p99 $b_p99 ms), floor $f_rps (p99 $f_p99 ms), relay $r_rps (p99 $r_p99 ms, errors $((b_err + f_err + r_err))); relay/floor $(ratio "$r_rps" "$f_rps"); store after: $r_stored"
    rf+=("$(ratio "$r_rps" "$f_rps")") rb+=("$(ratio "$r_rps" "$b_rps")") fb+=("$(ratio "$f_rps" "$b_rps")")
    rp+=("$r_p99") rr+=("$r_rps")
  done
  row "ingest  relay (durable, fwd on) : median $(median "${rr[@]}") req/s, p99 median $(median "${rp[@]}") ms"
  row "ingest  ratio relay/floor       : median $(median "${rf[@]}") of ${rf[*]} (target >= 0.75), p99 median $(median "${rp[@]}") ms (target < 5 ms)"
  row "ingest  ratio relay/bare        : median $(median "${rb[@]}") of ${rb[*]} (reported, no target)"
  row "ingest  ratio floor/bare        : median $(median "${fb[@]}") of ${fb[*]} (hyper + one group-committed SQLite insert, nothing else)"
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

# A throwaway PostgreSQL server in its own temp dir (owned by postgres when we are root),
# durable as shipped (fsync=on, synchronous_commit=on), on 127.0.0.1, with $PG_OPTS (the
# README's scale-out guide recommends backend_flush_after); sets PG_PORT.
start_pg() {
  PG_DIR=$(mktemp -d "${BENCH_TMP:-/tmp}/relay-bench-pg.XXXXXX")
  chmod 755 "$PG_DIR"
  if [[ $(id -u) == 0 ]]; then chown -R postgres:postgres "$PG_DIR"; fi
  as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -U relay --auth=trust -E UTF8 --no-sync \
    >"$TMP/initdb.log" 2>&1 || { echo "initdb failed:"; cat "$TMP/initdb.log"; exit 1; }
  for _ in 1 2 3; do
    PG_PORT=$((20000 + RANDOM % 20000))
    if as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 30 -o \
      "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$PG_DIR -c fsync=on -c synchronous_commit=on -c max_connections=300 $PG_OPTS" \
      start >/dev/null 2>&1; then
      return
    fi
  done
  echo "PostgreSQL did not start:"; cat "$PG_DIR/server.log"; exit 1
}

# A new empty database $1 on the throwaway server; prints its URL.
pg_db() {
  local url="postgres://relay@127.0.0.1:$PG_PORT/$1"
  "$BENCH" createdb "$url" >/dev/null
  echo "$url"
}

# The processes of the throwaway server: the postmaster and its children.
pg_pids() {
  local pm
  pm=$(head -1 "$PG_DIR/data/postmaster.pid" 2>/dev/null || true)
  [[ -n "$pm" ]] && echo "$pm" $(pgrep -P "$pm" || true)
}

# User+system CPU ticks (1/100 s) used so far by the processes given.
cpu_ticks() {
  local t=0 p
  for p in "$@"; do
    t=$((t + $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

# "commits wal_syncs wal_writes wal_bytes" of the whole server so far.
pg_stat() { "$BENCH" pgstat "postgres://relay@127.0.0.1:$PG_PORT/postgres"; }

if want pg; then
  start_pg
  echo "== pg: PostgreSQL $("$PG_BIN/pg_ctl" --version | awk '{ print $3 }') from $PG_BIN on 127.0.0.1:$PG_PORT, data in $PG_DIR (fsync=on, synchronous_commit=on, ${PG_OPTS:-no other setting}, otherwise initdb's defaults)"
  # A new cluster has one WAL segment: the first gigabyte of WAL creates and zero-fills the
  # others (16 MB each) during the load, where a server that has run a while recycles its
  # segments (measured: p99 12 ms while they are created, 5-8 ms after). So the server is
  # warmed up first: ingest on a throwaway database until about 1 GB of WAL was written.
  url=$(pg_db warmup)
  start_relay "$TMP/pg-warmup" "$url"
  read -r w_rps _ _ < <(run_wrk "$RELAY_ADDR" "$PG_WARMUP")
  stop_relay
  rm -rf "$TMP/pg-warmup" "$TMP/pg-warmup.log"
  echo "== pg warm-up: ${PG_WARMUP} s of ingest on a throwaway database ($w_rps req/s); WAL segments now: $(ls "$PG_DIR/data/pg_wal" 2>/dev/null | grep -c '^0' || true)"
  echo "== pg ingest: wrk -t1 -c$CONNS -d${DUR}s --latency -s bench/postback.lua (2 s warm-up each), $ROUNDS rounds of the relay on SQLite then on PostgreSQL"
  ps=() pp=() pr=()
  for round in $(seq "$ROUNDS"); do
    measure_sqlite_relay "$TMP/pg-sqlite-store"
    url=$(pg_db "ingest$round")
    read -r c0 s0 w0 by0 < <(pg_stat)
    start_relay "$TMP/pg-ingest" "$url"
    run_wrk "$RELAY_ADDR" 2 >/dev/null
    t0=$(cpu_ticks "$RELAY_PID"); g0=$(cpu_ticks $(pg_pids))
    read -r pr_rps pr_p99 pr_err < <(run_wrk "$RELAY_ADDR" "$DUR")
    t1=$(cpu_ticks "$RELAY_PID"); g1=$(cpu_ticks $(pg_pids))
    stop_relay
    sleep 1
    read -r c1 s1 w1 by1 < <(pg_stat)
    stored=$("$BENCH" counts "$url")
    commits=$((c1 - c0)) syncs=$((s1 - s0))
    row "pg      round $round: SQLite relay $r_rps req/s (p99 $r_p99 ms), PostgreSQL relay $pr_rps req/s (p99 $pr_p99 ms), errors $((r_err + pr_err)); pg/sqlite $(ratio "$pr_rps" "$r_rps")"
    row "          stores after: SQLite $r_stored; PostgreSQL $stored"
    row "          CPU per request on PostgreSQL: relay $(awk -v t=$((t1 - t0)) -v n="$pr_rps" -v d="$DUR" 'BEGIN { printf "%.0f", t * 1e4 / (n * d) }') us, PostgreSQL (all its processes) $(awk -v t=$((g1 - g0)) -v n="$pr_rps" -v d="$DUR" 'BEGIN { printf "%.0f", t * 1e4 / (n * d) }') us; $commits commits, $(awk -v c="$commits" -v s="$syncs" 'BEGIN { printf "%.1f", c / (s ? s : 1) }') per WAL sync, $(((by1 - by0) / (commits ? commits : 1))) WAL bytes per commit"
    ps+=("$(ratio "$pr_rps" "$r_rps")") pp+=("$pr_p99") pr+=("$pr_rps")
  done
  row "pg      relay on PostgreSQL     : median $(median "${pr[@]}") req/s, p99 median $(median "${pp[@]}") ms"
  row "pg      ratio pg/sqlite ingest  : median $(median "${ps[@]}") of ${ps[*]} (target >= 0.5), p99 median $(median "${pp[@]}") ms (target < 10 ms)"

  # Twice per concurrency: right after the fill, the planner still has the empty table's
  # statistics (autovacuum analyzes within autovacuum_naptime, 1 min); then after ANALYZE.
  for c in $DRAIN_CONC; do
    for a in "" analyze; do
      echo "== pg forward: drain $DRAIN_N records, rate limit off, concurrency $c ${a:+(ANALYZE after the fill)}"
      row "pg      $("$BENCH" drain "$DRAIN_N" "$c" "$(pg_db "drain$c$a")" $a 2>"$TMP/pg-drain.err" || cat "$TMP/pg-drain.err")"
      grep '^pre-filled' "$TMP/pg-drain.err" | sed 's/^/        /' || true
    done
  done

  if [[ "$PG_TWO" == 1 ]]; then
    echo "== pg two relays on one database, one wrk each in parallel (-c$CONNS each, 2 s warm-up)"
    url=$(pg_db two)
    start_relay "$TMP/pg-two-a" "$url"
    A_PID=$RELAY_PID A_ADDR=$RELAY_ADDR
    start_relay "$TMP/pg-two-b" "$url"
    B_PID=$RELAY_PID B_ADDR=$RELAY_ADDR
    # WRK_TAG: the two wrk processes would otherwise send the same postbacks (same seed,
    # same second), and one relay's would all be duplicates of the other's.
    WRK_TAG=a run_wrk "$A_ADDR" 2 >/dev/null &
    wa=$!
    WRK_TAG=b run_wrk "$B_ADDR" 2 >/dev/null &
    wb=$!
    wait "$wa" "$wb"
    WRK_TAG=a run_wrk "$A_ADDR" "$DUR" >"$TMP/two-a" &
    wa=$!
    WRK_TAG=b run_wrk "$B_ADDR" "$DUR" >"$TMP/two-b" &
    wb=$!
    wait "$wa" "$wb"
    RELAY_PID=$A_PID; stop_relay
    RELAY_PID=$B_PID; stop_relay
    read -r a_rps a_p99 a_err <"$TMP/two-a"
    read -r b_rps b_p99 b_err <"$TMP/two-b"
    row "pg      two relays, one database: $((a_rps + b_rps)) req/s together ($a_rps + $b_rps), p99 $a_p99 / $b_p99 ms, errors $((a_err + b_err))"
    row "pg      store after the run     : $("$BENCH" counts "$url")"
  fi
fi

echo "== one synced 4 KiB write: $(fsync_probe) us"
echo
echo "== results"
cat "$RESULTS"

#!/usr/bin/env bash
# crash_test.sh - kill -9 kvstashd in the middle of a put storm, restart it,
# read everything back.
#   sync mode : no acknowledged put is lost, nothing reads back corrupt
#   async mode: nothing reads back corrupt
#   ram mode  : (write-behind) nothing reads back corrupt; what was not written yet is a miss
# usage: crash_test.sh KVSTASHD STORM MODE [ROUNDS] [COUNT] [BYTES] [THREADS]
# ctest runs a short form; run it by hand with more rounds for the long form:
#   tests/cachesvc/crash_test.sh build/test/cachesvc/kvstashd \
#       build/test/tests/cachesvc/kvs-svc-storm sync 20 5000 262144 8
set -euo pipefail
daemon=$1 storm=$2 mode=$3 rounds=${4:-2} count=${5:-400} bytes=${6:-65536} threads=${7:-4}
dir=$(mktemp -d /tmp/kvs-crash-XXXXXX)
url="ipc://$dir/kvs.sock"
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

start() {
  "$daemon" --data_dir="$dir/data" --listen="$url" --http= --durability="$mode" \
    --workers=4 --log_level=warn 2>>"$dir/daemon.log" &
  pid=$!
  for _ in $(seq 1 200); do   # wait for the socket, at most 20 s
    [ -S "$dir/kvs.sock" ] && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$dir/daemon.log" >&2; return 1; }
    sleep 0.1
  done
  return 1
}

fail=0
for round in $(seq 1 "$rounds"); do
  rm -f "$dir/kvs.sock"
  start
  "$storm" put "$url" "$dir/ack.$round" "$round" "$count" "$bytes" "$threads" >"$dir/storm.$round" 2>&1 &
  spid=$!
  # kill somewhere in the storm: after 0.3 .. 1.5 s
  sleep "0.$((3 + RANDOM % 10))"
  [ $((RANDOM % 2)) = 1 ] && sleep 0.5
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  wait "$spid" || true
  acked=$(wc -l <"$dir/ack.$round")
  rm -f "$dir/kvs.sock"
  start
  out=$("$storm" verify "$url" "$dir/ack.$round" "$round" "$count" "$bytes" "$mode") || fail=1
  echo "round $round: killed after $acked acknowledged puts; $out" | tr '\n' ' '; echo
  # earlier rounds must still read back clean after yet another restart
  for r in $(seq 1 $((round - 1))); do
    "$storm" verify "$url" "$dir/ack.$r" "$r" "$count" "$bytes" "$mode" >/dev/null || { echo "round $r regressed"; fail=1; }
  done
  kill -TERM "$pid"; wait "$pid" || { echo "daemon exit status $?"; fail=1; }; pid=""
done
if [ "$fail" != 0 ]; then echo "crash test ($mode): FAIL"; tail -50 "$dir/daemon.log"; exit 1; fi
echo "crash test ($mode): PASS"

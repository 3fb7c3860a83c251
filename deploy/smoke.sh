#!/usr/bin/env bash
# FedDEL deployment smoke test on one machine (loopback only), by hand.
#
# What tests/deploy/test_loopback.py checks automatically, step by step with the real commands,
# so IT staff can see a deployment work before touching a network: a synthetic federation of 3
# centers, a CA and SuperLink certificate, one key per center, the SuperLink (TLS + center
# authentication), 3 SuperNodes, one curation round, and each center's status.
# Everything runs under a temporary folder; every process started here is stopped on exit.
#
#   deploy/smoke.sh            # uses feddel-* from .venv/bin, else from PATH
#   KEEP=1 deploy/smoke.sh     # keep the temporary folder to look at the outputs
#
# Takes a few minutes on 2 cores: Flower runs each message in a fresh ClientApp process.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -x "$here/.venv/bin/feddel-coordinator" ]]; then PATH="$here/.venv/bin:$PATH"; fi
for tool in feddel-sim feddel-coordinator feddel-center; do
  command -v "$tool" >/dev/null || { echo "smoke: $tool not found; install FedDEL first" >&2; exit 2; }
done

work="$(mktemp -d -t feddel-smoke.XXXXXX)"
export FLWR_HOME="$work/flwr-home" FLWR_TELEMETRY_ENABLED=0 OMP_NUM_THREADS=1
pids=()

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 60); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  if [[ "${KEEP:-0}" == 1 ]]; then echo "smoke: outputs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# start NAME COMMAND...: run in its own session (so its Flower children stop with it), log to a file
start() {
  local name="$1"; shift
  setsid "$@" >"$work/$name.log" 2>&1 &
  pids+=("$!")
}

wait_for() {  # wait_for NAME TEXT
  for _ in $(seq 360); do
    grep -q "$2" "$work/$1.log" && return 0
    sleep 0.5
  done
  echo "smoke: $1 did not print '$2'; its log:" >&2; tail -30 "$work/$1.log" >&2; exit 1
}

port="$(free_port)"
echo "== 1. a synthetic federation of 3 centers in $work/data"
feddel-sim data --out "$work/data" --centers 3 --scale small --seed 1 --size 32 >/dev/null

echo "== 2. certificates: CA, SuperLink certificate, one key per center"
feddel-coordinator certs init --out "$work/certs" --host 127.0.0.1
centers=(center-00 center-01 center-02)
for name in "${centers[@]}"; do
  feddel-coordinator certs add-center "$name" --out "$work/certs" | grep "public key\|fingerprint"
done

echo "== 3. the SuperLink on 127.0.0.1:$port"
start superlink feddel-coordinator start --certs "$work/certs" --state "$work/link" \
  --host 127.0.0.1 --port "$port"
wait_for superlink "SuperLink ready"
grep "^center\|SuperLink ready" "$work/superlink.log"

echo "== 4. three centers join"
for name in "${centers[@]}"; do
  cat >"$work/$name.toml" <<EOF
[center]
name = "$name"
data = "data/$name"
state = "state/$name"

[superlink]
address = "127.0.0.1:$port"
ca = "certs/centers/$name/ca.crt"
key = "certs/centers/$name/center.key"

[supernode]
runtime-port = $(free_port)
EOF
  start "$name" feddel-center join --config "$work/$name.toml"
done

echo "== 5. one curation round (feddel, 10% budget)"
feddel-coordinator curate --superlink "127.0.0.1:$port" --certs "$work/certs" \
  --state "$work/link" --out "$work/runs" --run-name smoke --budget 0.1 \
  --set k=4 --set image-size=32 --set min-centers=3

echo "== 6. what each center recorded"
for name in "${centers[@]}"; do
  feddel-center status --config "$work/$name.toml" | grep -v "^┏\|^┡\|^└"
done
echo "smoke: OK"

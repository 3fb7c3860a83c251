#!/usr/bin/env bash
# FedDEL deployment smoke test on one machine (loopback only), by hand.
#
# The runbook (deploy/README.md) step by step with the real commands, so IT staff can see a
# deployment work before touching a network: a synthetic federation of 3 centers, the CA and
# SuperLink certificate, each center making its own key, the SuperLink (TLS, center and
# operator authentication), an operator token, two centers joining and a third admitted while
# the SuperLink runs, one curation round submitted by that operator, both status commands, and
# a center revoked. Everything runs under a temporary folder; every process started here is
# stopped on exit. tests/deploy/test_loopback.py checks the same and more automatically.
#
#   deploy/smoke.sh            # uses feddel-* from .venv/bin, else from PATH
#   KEEP=1 deploy/smoke.sh     # keep the temporary folder to look at the outputs
#
# Takes several minutes on 2 cores: Flower runs each message in a fresh ClientApp process.
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
config="$work/etc/coordinator.toml"
centers=(center-00 center-01 center-02)

echo "== 1. a synthetic federation of 3 centers in $work/data"
feddel-sim data --out "$work/data" --centers 3 --scale small --seed 1 --size 32 >/dev/null

echo "== 2. coordinator: certificates and coordinator.toml"
feddel-coordinator certs init --out "$work/etc/certs" --host 127.0.0.1
cat >"$config" <<EOF
[coordinator]
certs = "certs"
state = "$work/link"
host = "127.0.0.1"
port = $port
runs = "$work/link/runs"

[round]
k = 4
image-size = 32
min-centers = 3
budget = 0.1
EOF
feddel-coordinator config --config "$config"

echo "== 3. each center checks its images, makes its own key pair and its center.toml"
for name in "${centers[@]}"; do
  feddel-center check --data "$work/data/$name" --json "$work/$name-check.json" >/dev/null
  feddel-center keygen --out "$work/$name" --name "$name" | grep fingerprint
  cat >"$work/$name/center.toml" <<EOF
[center]
name = "$name"
data = "$work/data/$name"
state = "$work/state/$name"

[superlink]
address = "127.0.0.1:$port"
ca = "ca.crt"
key = "center.key"

[supernode]
runtime-port = $(free_port)
EOF
done
feddel-center embed --data "$work/data/center-00" --state "$work/state/center-00" --image-size 32 \
  --json "$work/center-00-embed.json" >/dev/null

echo "== 4. coordinator admits two centers (their center.pub only) and starts the SuperLink"
for name in center-00 center-01; do
  feddel-coordinator certs add-center "$name" --out "$work/etc/certs" \
    --public-key "$work/$name/center.pub" | grep fingerprint
  cp "$work/etc/certs/ca.crt" "$work/$name/ca.crt"   # what the coordinator sends back
done
start superlink feddel-coordinator start --config "$config"
wait_for superlink "SuperLink ready"
grep "^center\|SuperLink ready" "$work/superlink.log"
feddel-coordinator operator add alice --out "$work/alice.token" --config "$config"

echo "== 5. two centers join; the third is admitted while the SuperLink runs, then joins"
for name in center-00 center-01; do start "$name" feddel-center join --config "$work/$name/center.toml"; done
feddel-coordinator certs add-center center-02 --out "$work/etc/certs" \
  --public-key "$work/center-02/center.pub" | grep fingerprint
cp "$work/etc/certs/ca.crt" "$work/center-02/ca.crt"
wait_for superlink "center center-02: key registered"
start center-02 feddel-center join --config "$work/center-02/center.toml"
for name in "${centers[@]}"; do wait_for superlink "center $name connected"; done

echo "== 6. one curation round, submitted by operator alice ([round] of coordinator.toml)"
feddel-coordinator curate --config "$config" --operator-token "$work/alice.token" \
  --method feddel --run-name smoke

echo "== 7. status at the coordinator and at each center"
feddel-coordinator status --config "$config" --json "$work/status.json" \
  --prometheus "$work/status.prom"
for name in "${centers[@]}"; do
  feddel-center status --config "$work/$name/center.toml" --check | grep "connection\|manifest"
done

echo "== 8. center-02 is revoked in one command; the others stay"
feddel-coordinator certs revoke center-02 --config "$config"
wait_for center-02 "key was revoked"
grep "key was revoked" "$work/center-02.log"
feddel-coordinator status --config "$config" --check
echo "smoke: OK"

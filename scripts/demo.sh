#!/usr/bin/env bash
# The main job: a registry with its embedded store, an agent on this host, and the example
# spec (examples/node-spec.yaml: two containers) applied through stewardctl.
#
#   bash scripts/demo.sh          start everything, apply the spec, wait until converged
#   bash scripts/demo.sh stop     stop the registry and the agent (containers keep running)
#   bash scripts/demo.sh clean    stop, remove the demo's containers and state
#
# State lives in $STEWARD_DEMO_DIR (default /tmp/steward-demo); the registry listens on
# 127.0.0.1:$STEWARD_DEMO_PORT (default 7700).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${STEWARD_DEMO_DIR:-/tmp/steward-demo}"
PORT="${STEWARD_DEMO_PORT:-7700}"
BIN="$PWD/target/release"
AGENT="$PWD/target/release-agent/steward-agent"
export STEWARD_REGISTRY="http://127.0.0.1:$PORT"

stop() {
  for p in agent registry; do
    if [ -f "$DIR/$p.pid" ] && kill -0 "$(cat "$DIR/$p.pid")" 2>/dev/null; then
      kill "$(cat "$DIR/$p.pid")" && echo "stopped $p"
    fi
    rm -f "$DIR/$p.pid"
  done
}

case "${1:-start}" in
  stop) stop; exit 0 ;;
  clean)
    stop
    ids=$(docker ps -aq --filter label=io.steward.managed=true --filter "label=io.steward.node=$(/usr/bin/python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["node_id"])' "$DIR/agent/node.json" 2>/dev/null || echo none)" 2>/dev/null || true)
    [ -n "$ids" ] && docker rm -f $ids >/dev/null && echo "removed the demo's containers"
    rm -rf "$DIR"; exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|clean]" >&2; exit 2 ;;
esac

# What this script itself uses (a fresh Debian has neither): curl and python3 (JSON reading),
# and protoc (protobuf-compiler) with the well-known .proto files it imports (libprotobuf-dev,
# which --no-install-recommends leaves out), which building the registry needs (the etcd
# client's gRPC code).
need=()
command -v curl >/dev/null || need+=(curl)
[ -x /usr/bin/python3 ] || need+=(python3)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "== Docker engine"
bash scripts/docker-up.sh
echo "== demo image steward-demo/busybox:1 (built locally from busybox-static: no image registry is reachable)"
bash scripts/test-image.sh steward-demo/busybox:1
echo "== build (release)"
cargo build --release --locked -q -p steward-registry
cargo build --profile release-agent --locked -q -p steward-agent   # the agent's shipped build

stop
mkdir -p "$DIR"
echo "== registry on $STEWARD_REGISTRY (store: $DIR/registry)"
"$BIN/steward-registry" serve --listen "127.0.0.1:$PORT" --data-dir "$DIR/registry" >"$DIR/registry.log" 2>&1 &
echo $! >"$DIR/registry.pid"
for _ in $(seq 100); do curl -fsS "$STEWARD_REGISTRY/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
export STEWARD_TOKEN_FILE="$DIR/registry/admin.token"
CTL="$BIN/stewardctl"

echo "== agent (state: $DIR/agent)"
if [ ! -f "$DIR/agent/node.json" ]; then
  ENROLL=$("$CTL" tokens create --uses 1 --label demo=true --description "scripts/demo.sh" -q 2>/dev/null)
else
  ENROLL=""
fi
cat >"$DIR/agent.toml" <<TOML
registry = "$STEWARD_REGISTRY"
enrollment_token = "$ENROLL"
data_dir = "$DIR/agent"
resync_interval = "10s"
TOML
chmod 600 "$DIR/agent.toml"
"$AGENT" --config "$DIR/agent.toml" run >"$DIR/agent.log" 2>&1 &
echo $! >"$DIR/agent.pid"
for _ in $(seq 200); do [ -f "$DIR/agent/node.json" ] && break; sleep 0.1; done
NODE=$(/usr/bin/python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["node_id"])' "$DIR/agent/node.json")
echo "node $NODE enrolled"

echo "== stewardctl spec apply $NODE -f examples/node-spec.yaml"
"$CTL" spec apply "$NODE" -f examples/node-spec.yaml
GEN=$("$CTL" spec get "$NODE" --generation-only)
echo "== waiting for the agent to converge generation $GEN"
for i in $(seq 300); do
  if "$CTL" -o json nodes get "$NODE" | /usr/bin/python3 -c '
import json,sys
n=json.load(sys.stdin); st=n.get("status") or {}
ok = st.get("observed_generation")==int(sys.argv[1]) and st.get("resources") and all(r["state"]=="converged" for r in st["resources"])
sys.exit(0 if ok and n["health"]=="ready" else 1)' "$GEN"; then break; fi
  [ "$i" = 300 ] && { echo "did not converge in 30 s; see $DIR/agent.log" >&2; exit 1; }
  sleep 0.1
done
"$CTL" nodes list
echo
"$AGENT" --config "$DIR/agent.toml" status
echo
echo "== the web container answers on 127.0.0.1:18080:"
curl -fsS http://127.0.0.1:18080/ | head -3
echo
echo "Registry and agent keep running in the background (logs in $DIR)."
echo "Try: STEWARD_TOKEN_FILE=$STEWARD_TOKEN_FILE $CTL nodes get $NODE ; docker rm -f web (it comes back)"
echo "Stop with: bash scripts/demo.sh stop    Clean up with: bash scripts/demo.sh clean"

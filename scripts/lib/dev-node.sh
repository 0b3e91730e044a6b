# Sourced by the benchmark scripts. start_dev_node BIN LOG RPC_PORT API_PORT MODEL [ARGS…]
# starts a one-node dev chain (temporary data) serving MODEL with ARGS more, logging to LOG,
# sets PID, and returns once its OpenAI-compatible API is open; exits if the node stops first.
start_dev_node() {
  local bin="$1" log="$2" rpc="$3" api="$4" model="$5"
  shift 5
  "$bin" node --dev --tmp --rpc-port "$rpc" --serve-model "$model" --api-port "$api" "$@" >"$log" 2>&1 &
  PID=$!
  for _ in $(seq 1 600); do
    grep -q "OpenAI-compatible API on" "$log" && return 0
    kill -0 "$PID" 2>/dev/null || { echo "the node stopped; see $log" >&2; exit 1; }
    sleep 0.2
  done
  echo "the node's API did not open in 120 s; see $log" >&2
  exit 1
}

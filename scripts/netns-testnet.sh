#!/usr/bin/env bash
# A testnet on hosts made of network namespaces (root only): validators on public hosts joined
# by a bridge (the "internet", 10.77.0.0/24), and workers each behind its own NAT router
# (masquerading, dropping what comes from outside, like a home router), so that AutoNAT, the
# relays and hole punching are exercised. Optional packet loss, latency and bandwidth limits per
# host.
#
#   scripts/netns-testnet.sh start [--validators N] [--nat-workers M] [--model PATH]
#                                  [--split L] [--loss PCT] [--delay MS] [--rate MBIT]
#   scripts/netns-testnet.sh status      # heights, reachability, peers of every host
#   scripts/netns-testnet.sh exec HOST CMD...   # e.g. exec v0 curl -s 127.0.0.1:9944 ...
#   scripts/netns-testnet.sh stop        # kills the nodes, removes every namespace and link
#
# Hosts: v0..v(N-1) (validators, 10.77.0.10+i), w0..w(M-1) (NATed workers, 192.168.k+1.2
# behind routers r0.. at 10.77.0.100+k). With --model, validator 0 serves layers 0..L (default
# 15) and the OpenAI API on its port 8080, every worker serves L..30 (`--layers`), and each
# node's RPC is on 127.0.0.1:9944 inside its host. Logs and data in $BITORCH_NETNS_DIR
# (default /tmp/bitorch-netns). --delay MS holds every packet a host receives for MS milliseconds
# (two hosts are then 2 x MS apart in round trip): the kernel here has no netem, so a small
# program (test-support's `netdelay` example) holds them on netfilter's queue.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${BITORCH_NETNS_DIR:-/tmp/bitorch-netns}"
NET=10.77.0
BR=btnet0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
BIN="$CARGO_TARGET_DIR/debug/bitorch"
NETDELAY="$CARGO_TARGET_DIR/debug/examples/netdelay"

need_root() {
  if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null || ! command -v iptables >/dev/null; then
    echo "netns-testnet.sh needs root, ip (iproute2) and iptables (scripts/install-deps.sh installs them)" >&2
    exit 2
  fi
}

in_ns() { local ns="$1"; shift; ip netns exec "bt-$ns" "$@"; }

rpc() { # host method [params]
  in_ns "$1" curl -s -m 5 -H 'Content-Type: application/json' \
    -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$2\",\"params\":${3:-[]}}" http://127.0.0.1:9944
}

on_bridge() { # name address
  ip netns add "bt-$1"
  ip link add "bt-$1-o" type veth peer name "bt-$1-i"
  ip link set "bt-$1-i" netns "bt-$1"
  ip link set "bt-$1-o" master "$BR" up
  ip -n "bt-$1" addr add "$2/24" dev "bt-$1-i"
  ip -n "bt-$1" link set "bt-$1-i" up
  ip -n "bt-$1" link set lo up
}

natted() { # k
  local k="$1" wan="$NET.$((100 + $1))" lan="192.168.$(($1 + 1))"
  on_bridge "r$k" "$wan"
  ip netns add "bt-w$k"
  ip link add "bt-r$k-l" type veth peer name "bt-w$k-i"
  ip link set "bt-r$k-l" netns "bt-r$k"
  ip link set "bt-w$k-i" netns "bt-w$k"
  ip -n "bt-r$k" addr add "$lan.1/24" dev "bt-r$k-l"
  ip -n "bt-r$k" link set "bt-r$k-l" up
  ip -n "bt-w$k" addr add "$lan.2/24" dev "bt-w$k-i"
  ip -n "bt-w$k" link set "bt-w$k-i" up
  ip -n "bt-w$k" link set lo up
  ip -n "bt-w$k" route add default via "$lan.1"
  in_ns "r$k" sysctl -qw net.ipv4.ip_forward=1
  in_ns "r$k" iptables -t nat -A POSTROUTING -o "bt-r$k-i" -j MASQUERADE
  in_ns "r$k" iptables -A FORWARD -i "bt-r$k-i" -o "bt-r$k-l" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  in_ns "r$k" iptables -A FORWARD -i "bt-r$k-i" -o "bt-r$k-l" -j DROP
  in_ns "r$k" iptables -A INPUT -i "bt-r$k-i" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  in_ns "r$k" iptables -A INPUT -i "bt-r$k-i" -j DROP
}

shape() { # host dev loss rate delay
  if [ -n "$5" ]; then
    "$NETDELAY" "bt-$1" "$5" 2>>"$DIR/netdelay.log" &
    echo $! >> "$DIR/pids"
    sleep 0.2
    in_ns "$1" iptables -t mangle -A PREROUTING -i "$2" -j NFQUEUE --queue-num 0 --queue-bypass
  fi
  if [ -n "$3" ]; then
    in_ns "$1" iptables -A INPUT -i "$2" -m statistic --mode random --probability "$(awk "BEGIN{print $3/100}")" -j DROP
  fi
  if [ -n "$4" ]; then
    in_ns "$1" tc qdisc add dev "$2" root tbf rate "${4}mbit" burst 256kb latency 200ms
  fi
}

stop() {
  if [ -f "$DIR/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$DIR/pids"
    sleep 1
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done < "$DIR/pids"
    rm -f "$DIR/pids"
  fi
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^bt-' || true); do
    # Whatever still runs there (a namespace outlives its name while a process holds it).
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns"
  done
  for link in $(ip -br link 2>/dev/null | awk '{print $1}' | grep '^bt-' | cut -d@ -f1 || true); do
    ip link del "$link" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
}

start() {
  local validators=4 workers=1 model="" split=15 loss="" rate="" delay=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --validators) validators="$2"; shift 2 ;;
      --nat-workers) workers="$2"; shift 2 ;;
      --model) model="$2"; shift 2 ;;
      --split) split="$2"; shift 2 ;;
      --loss) loss="$2"; shift 2 ;;
      --rate) rate="$2"; shift 2 ;;
      --delay) delay="$2"; shift 2 ;;
      *) echo "unknown option $1" >&2; exit 2 ;;
    esac
  done
  if [ "$workers" -gt 0 ] && [ -z "$model" ]; then
    model="$(scripts/fetch-model.sh)"
  fi
  stop
  cargo build -q -p bitorch --bin bitorch
  [ -n "$delay" ] && cargo build -q -p bitorch-test-support --example netdelay
  rm -rf "$DIR" && mkdir -p "$DIR"
  ip link add "$BR" type bridge
  ip addr add "$NET.1/24" dev "$BR"
  ip link set "$BR" up
  "$BIN" chain-spec --chain local --validators "$validators" -o "$DIR/spec.json" 2>/dev/null
  mkdir -p "$DIR/v0/chains/local/network"
  local boot_peer
  boot_peer="$("$BIN" key generate-node-key --file "$DIR/v0/chains/local/network/secret_ed25519" 2>&1 >/dev/null)"
  local boot="/ip4/$NET.10/tcp/30333/p2p/$boot_peer"
  local names=(Alice Bob Charlie Dave Eve Ferdie)
  local common=(--chain "$DIR/spec.json" --listen-addr /ip4/0.0.0.0/tcp/30333 --block-time 500 --allow-private-ip)
  for i in $(seq 0 $((validators - 1))); do
    on_bridge "v$i" "$NET.$((10 + i))"
    shape "v$i" "bt-v$i-i" "$loss" "$rate" "$delay"
    local extra=(--validator "//${names[$i]}" --public-addr "/ip4/$NET.$((10 + i))/tcp/30333")
    [ "$i" -gt 0 ] && extra+=(--boot-nodes "$boot")
    if [ "$i" -eq 0 ] && [ -n "$model" ]; then
      extra+=(--serve-model "$model" --layers "0..$split" --api-account //Alice)
    fi
    ip netns exec "bt-v$i" "$BIN" node "${common[@]}" --base-path "$DIR/v$i" "${extra[@]}" >/dev/null 2>"$DIR/v$i.log" &
    echo $! >> "$DIR/pids"
  done
  for k in $(seq 0 $((workers - 1))); do
    natted "$k"
    shape "w$k" "bt-w$k-i" "$loss" "$rate" "$delay"
    local key="//Worker$k"
    [ "$k" -lt 2 ] && key="//${names[$((4 + k))]}"
    ip netns exec "bt-w$k" "$BIN" node "${common[@]}" --base-path "$DIR/w$k" --boot-nodes "$boot" \
      --serve-model "$model" --layers "$split..30" --worker-key "$key" --api-account "$key" \
      --no-job-ahead >/dev/null 2>"$DIR/w$k.log" &
    echo $! >> "$DIR/pids"
  done
  echo "started $validators validators and $workers NATed workers; logs in $DIR"
  echo "  scripts/netns-testnet.sh status"
  if [ -n "$model" ]; then
    echo "  scripts/netns-testnet.sh exec v0 curl -s 127.0.0.1:8080/v1/chat/completions \\"
    echo "    -H 'Content-Type: application/json' -d '{\"model\":\"SmolLM2-135M-Instruct.Q4_1\",\"messages\":[{\"role\":\"user\",\"content\":\"What is the capital of France?\"}]}'"
  fi
}

status() {
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^bt-[vw][0-9]+$' | sort); do
    local h="${ns#bt-}"
    local head health
    head="$(rpc "$h" chain_getHeader | sed -n 's/.*"number":"\(0x[0-9a-f]*\)".*/\1/p')"
    health="$(rpc "$h" system_health | sed -n 's/.*"reachability":{\([^}]*\)}.*/\1/p')"
    printf '%-4s best %-6s %s\n' "$h" "$((${head:-0}))" "${health:-not answering}"
  done
}

case "${1:-}" in
  start) shift; need_root; start "$@" ;;
  stop) need_root; stop; echo "stopped" ;;
  status) need_root; status ;;
  exec) shift; need_root; h="$1"; shift; in_ns "$h" "$@" ;;
  *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

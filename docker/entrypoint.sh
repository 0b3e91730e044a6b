#!/bin/sh
# Entry point of the compose testnet.
#   bitorch-entrypoint init N       (once) writes /testnet/spec.json with N validators and one
#                                   node key per node; prints node 0's peer id to /testnet/boot
#   bitorch-entrypoint node I NAME  runs node I as validator //NAME, booting from node 0
set -eu
T=/testnet
case "$1" in
  init)
    n="$2"
    if [ -f "$T/spec.json" ]; then echo "testnet already initialised"; exit 0; fi
    bitorch chain-spec --chain local --validators "$n" -o "$T/spec.json"
    i=0
    while [ "$i" -lt "$n" ]; do
      mkdir -p "$T/node$i/chains/local/network"
      peer="$(bitorch key generate-node-key --file "$T/node$i/chains/local/network/secret_ed25519" 2>&1 >/dev/null)"
      [ "$i" -eq 0 ] && echo "$peer" > "$T/boot"
      i=$((i + 1))
    done
    # The nodes run unprivileged.
    chown -R 1000:1000 "$T"
    echo "spec and node keys written; boot peer $(cat "$T/boot")"
    ;;
  node)
    i="$2"; name="$3"
    set -- node --chain "$T/spec.json" --base-path "$T/node$i" --validator "//$name" \
      --rpc-external --rpc-port 9944 --listen-addr /ip4/0.0.0.0/tcp/30333
    if [ "$i" -ne 0 ]; then
      set -- "$@" --boot-nodes "/ip4/172.28.0.10/tcp/30333/p2p/$(cat "$T/boot")"
    fi
    exec bitorch "$@"
    ;;
  *) echo "usage: bitorch-entrypoint init N | node I NAME" >&2; exit 2 ;;
esac

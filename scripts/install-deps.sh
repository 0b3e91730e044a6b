#!/usr/bin/env bash
# Installs the system packages the build and tests need: RocksDB's bindings need libclang; the
# network-namespace test beds need iptables (NAT), tc (iproute2) and ping (iputils-ping, to check
# the latency they add).
set -euo pipefail
if dpkg -s libclang-dev >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 \
  && command -v iptables >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 \
  && command -v ping >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libclang-dev clang g++ iptables iproute2 iputils-ping >/dev/null

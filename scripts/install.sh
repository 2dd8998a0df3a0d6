#!/usr/bin/env bash
# Install everything netoffload needs on a fresh Debian machine (run as root):
# system packages from apt-get (only what is missing), then a virtual environment
# in .venv with netoffload and its dependencies. `--test` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

need_apt=()
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v ethtool >/dev/null 2>&1 || need_apt+=(ethtool)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
# the tunnel's peers and tools: wireguard-go (the interop peer of the demo and
# tests), wireguard-tools (`wg`, which works on a netoffload interface), iperf3
command -v wireguard-go >/dev/null 2>&1 || need_apt+=(wireguard-go)
command -v wg >/dev/null 2>&1 || need_apt+=(wireguard-tools)
command -v iperf3 >/dev/null 2>&1 || need_apt+=(iperf3)
command -v ping >/dev/null 2>&1 || need_apt+=(iputils-ping)
# tshark: the tests decrypt our ESP captures with it (standard ESP tooling)
[ -n "$extras" ] && { command -v tshark >/dev/null 2>&1 || need_apt+=(tshark); }
# openvpn: a row of `bench tunnel` (the suite runs it --quick); iproute2's `ss` too
[ -n "$extras" ] && { command -v openvpn >/dev/null 2>&1 || need_apt+=(openvpn); }

py=""
for cand in python3.13 python3.12 python3.11 python3; do
  if command -v "$cand" >/dev/null 2>&1 &&
     "$cand" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    py=$cand; break
  fi
done
[ -n "$py" ] || need_apt+=(python3 python3-venv python3-dev python3-pip)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: need root to apt-get install: ${need_apt[*]}" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [ -z "$py" ]; then
  py=python3
fi

if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".$extras"
echo "netoffload installed in $(pwd)/.venv"

#!/usr/bin/env bash
# Installs, from Debian's packages, the programs FluxMQ's build, tests and benchmarks need,
# only where they are missing. Runs as root on a Debian machine (the README's set-up).
#   install-peers.sh compiler | python-venv | test | bench
set -euo pipefail

need=()
want() {  # want COMMAND PACKAGE: install PACKAGE when COMMAND is missing
  command -v "$1" >/dev/null 2>&1 || need+=("$2")
}

case "${1:-test}" in
  compiler)    want cc gcc; need+=(python3-dev) ;;
  python-venv) need+=(python3-venv python3-dev) ;;
  test)
    want mosquitto_pub mosquitto-clients
    want mosquitto_sub mosquitto-clients
    want mosquitto_passwd mosquitto
    ;;
  bench)
    want mosquitto mosquitto
    ;;
  *) echo "usage: $0 compiler|python-venv|test|bench" >&2; exit 2 ;;
esac

[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing packages: ${need[*]} (run as root, or install them)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# apt-cache needs a fresh package list on a new machine; refresh once a day at most.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
  apt-get update -q
fi
apt-get install -y -q --no-install-recommends "${need[@]}"

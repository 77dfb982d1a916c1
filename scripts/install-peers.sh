#!/usr/bin/env bash
# Installs, from Debian's packages, the programs FluxMQ's build, tests and benchmarks need,
# only where they are missing. Runs as root on a Debian machine (the README's set-up).
#   install-peers.sh compiler | python-venv | test | bench | queue-bench
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
    # tests/transport: certificates, curl, MQTT.js in headless Chromium (npm brings MQTT.js)
    want openssl openssl
    want curl curl
    want chromium chromium
    want npm npm
    # tests/coap: libcoap's clients (plain UDP and DTLS with OpenSSL)
    want coap-client-notls libcoap3-bin
    want coap-client-openssl libcoap3-bin
    js="$(cd "$(dirname "$0")/.." && pwd)/tests/transport/js"
    # MQTT.js into tests/transport/js/node_modules, on exit: after the packages above are in.
    trap 'rc=$?; [ $rc -eq 0 ] || exit $rc; [ -f "$js/node_modules/mqtt/dist/mqtt.min.js" ] || npm ci --prefix "$js" --no-audit --no-fund --loglevel=error || exit 1' EXIT
    ;;
  bench)
    want mosquitto mosquitto
    ;;
  queue-bench)  # python -m bench queue: the durable-queue peers
    want rabbitmq-server rabbitmq-server
    want nats-server nats-server
    ;;
  *) echo "usage: $0 compiler|python-venv|test|bench|queue-bench" >&2; exit 2 ;;
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

#!/usr/bin/env bash
# `make prereqs` (run first by `make test`): the system packages the tests need.
#   mosquitto (MQTT tests, make sim), openssl (TLS test PKI), node + npm (32-bit MicroPython from npm),
#   gcc with 32-bit support (Debian: gcc-multilib; the fixed-heap 32-bit MicroPython build),
#   PostgreSQL (the fleet store's test starts a throwaway cluster on 127.0.0.1), Chromium and its
#   driver (the fleet console's test drives a headless browser).
# As root: installs the missing Debian packages (apt-get). Otherwise: one line naming them, exit 1.
set -euo pipefail

have() {    # mosquitto lives in /usr/sbin, which is not on a normal user's PATH on Debian
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]
}

missing() {
  local m=()
  have mosquitto || m+=(mosquitto)
  have openssl || m+=(openssl)
  have node || m+=(nodejs)
  have npm || m+=(npm)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || m+=(postgresql)
  have chromium || m+=(chromium)
  have chromedriver || m+=(chromium-driver)
  if ! have gcc || ! echo 'int main(){return 0;}' | gcc -m32 -x c - -o /dev/null >/dev/null 2>&1; then
    m+=(gcc-multilib)
  fi
  echo "${m[@]}"
}

need=$(missing)
[ -z "$need" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "prereqs: installing $need (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086  # $need is a list of package names
  if apt-get update -qq && apt-get install -y -qq $need >/dev/null; then
    need=$(missing)
    [ -z "$need" ] && exit 0
  fi
fi
echo "missing: $need (Debian: sudo apt-get install $need)" >&2
exit 1

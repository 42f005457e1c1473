#!/usr/bin/env bash
# Makes sure the Mosquitto MQTT broker is installed for the tests (each MQTT test starts its own
# broker on a free port; nothing is started here), installing the Debian package where it is
# missing, and prints the binary's path on its last line. Idempotent; safe to run every time.
set -euo pipefail

find_it() {
  if [ -n "${BILLSYNC_MOSQUITTO:-}" ] && [ -x "$BILLSYNC_MOSQUITTO" ]; then echo "$BILLSYNC_MOSQUITTO"; return 0; fi
  # Debian's package puts the broker in /usr/sbin, which is not on every user's PATH.
  command -v mosquitto 2>/dev/null && return 0
  [ -x /usr/sbin/mosquitto ] && { echo /usr/sbin/mosquitto; return 0; }
  return 1
}

if found=$(find_it); then echo "$found"; exit 0; fi

echo "Mosquitto is not installed; installing it with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq mosquitto >&2
# The package starts a broker on port 1883 as a service where it can; the tests do not use it.

if found=$(find_it); then echo "$found"; exit 0; fi
echo "mosquitto is still not found after installing the package" >&2
exit 1

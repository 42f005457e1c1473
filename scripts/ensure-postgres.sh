#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers for the tests, installing and starting it where it is
# missing, and prints the URL to use on its last line. Idempotent; safe to run every time.
set -euo pipefail

url="${BILLSYNC_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
pw_url="postgres://postgres:billsync@127.0.0.1:5432/postgres"

answers() { command -v psql >/dev/null 2>&1 && psql "$1" -qtAc 'select 1' >/dev/null 2>&1; }

# The tests connect over TLS (sslmode=require, verify-ca, verify-full with the server's own
# certificate as root, for the name localhost). A server with TLS off gets a certificate of
# its own for localhost and 127.0.0.1, in its data directory, and TLS on.
ensure_tls() {
  [ "$(psql "$1" -qtAc 'show ssl')" = on ] && return 0
  echo "turning TLS on in PostgreSQL with a certificate for localhost" >&2
  local data; data=$(psql "$1" -qtAc 'show data_directory')
  runuser -u postgres -- openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$data/billsync-test.key" -out "$data/billsync-test.crt" >/dev/null 2>&1
  psql "$1" -qtAc "ALTER SYSTEM SET ssl_cert_file = '$data/billsync-test.crt'" >/dev/null
  psql "$1" -qtAc "ALTER SYSTEM SET ssl_key_file = '$data/billsync-test.key'" >/dev/null
  psql "$1" -qtAc "ALTER SYSTEM SET ssl = on" >/dev/null
  psql "$1" -qtAc "SELECT pg_reload_conf()" >/dev/null
  sleep 1
  [ "$(psql "$1" -qtAc 'show ssl')" = on ] || { echo "PostgreSQL did not turn TLS on" >&2; exit 1; }
}
ready() { ensure_tls "$1"; echo "$1"; exit 0; }

if answers "$url"; then ready "$url"; fi
if answers "$pw_url"; then ready "$pw_url"; fi

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "PostgreSQL is not installed; installing it with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi

version=$(ls /etc/postgresql | sort -V | tail -n 1)
if [ -z "$version" ]; then
  echo "no PostgreSQL cluster found under /etc/postgresql" >&2; exit 1
fi
if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
  echo "starting PostgreSQL $version" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || pg_ctlcluster "$version" main start >&2
fi
for _ in $(seq 1 30); do
  if answers "$url"; then ready "$url"; fi
  if answers "$pw_url"; then ready "$pw_url"; fi
  # A fresh Debian cluster does not trust TCP logins: give the postgres role a password
  # (through the local socket, as the postgres OS user) and use it.
  if command -v runuser >/dev/null 2>&1 && runuser -u postgres -- psql -qtAc "ALTER USER postgres PASSWORD 'billsync'" >/dev/null 2>&1; then
    if answers "$pw_url"; then ready "$pw_url"; fi
  fi
  sleep 1
done
echo "PostgreSQL does not answer at $url" >&2
exit 1

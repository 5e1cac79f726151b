#!/usr/bin/env bash
# The system services the test suite drives for real: Debian's Chromium (browser tests of the labeling
# app) and a PostgreSQL server on 127.0.0.1:5432 (the labeling store on PostgreSQL). Idempotent. Whatever
# cannot be set up here is reported, and the tests that need it skip, printing the reason.
set -u
PG_ROLE=rlhfkit
PG_PASSWORD=rlhfkit

have_postgres() { ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; }

missing=()
command -v chromium >/dev/null || missing+=(chromium)
have_postgres || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test services: installing ${missing[*]} (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"; } >/tmp/rlhfkit-apt.log 2>&1 \
      || echo "test services: apt-get install ${missing[*]} failed; see /tmp/rlhfkit-apt.log"
  else
    echo "test services: ${missing[*]} not installed and apt-get needs root; those tests will skip"
  fi
fi

if have_postgres && [ "$(id -u)" = 0 ]; then
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_lsclusters -h 2>/dev/null | grep -q "^$version main" || pg_createcluster "$version" main >/dev/null
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    pg_ctlcluster "$version" main start || echo "test services: PostgreSQL $version did not start"
    for _ in $(seq 20); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  fi
  if pg_isready -q -h 127.0.0.1 -p 5432; then
    # a login role that may create the throwaway databases the tests make
    runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE'" | grep -q 1 \
      || runuser -u postgres -- psql -qc "CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
  fi
elif have_postgres; then
  pg_isready -q -h 127.0.0.1 -p 5432 || echo "test services: PostgreSQL is installed but not running, and starting it needs root"
fi
exit 0

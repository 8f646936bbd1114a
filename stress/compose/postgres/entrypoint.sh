#!/usr/bin/env bash
# Entrypoint of the stand-in postgres:15 image (see Dockerfile beside it): creates the
# cluster on the first start, from POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB like the
# official image, then runs the server in the foreground as postgres.
set -euo pipefail

# Started as root: a fresh volume is root's, so hand it to postgres, then drop privileges.
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set (the server accepts only password logins over the network)}"
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  # The password goes through a file, never a command line (ps would show it).
  pwfile=$(mktemp)
  trap 'rm -f "$pwfile"' EXIT
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  # Other containers reach it over the compose network: listen on every address and ask
  # them for the password (SCRAM); the local socket stays trusted, as in the official image.
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    # Socket only while the database is created, so no client sees a half-made server.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    createdb -U "$user" "$db"
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  echo "entrypoint: cluster created in $PGDATA (user $user, database $db)"
fi

exec "$@"

#!/usr/bin/env bash
# The machine's MariaDB server for the tests: `start` (if it is down) or `restart`.
# Debian's init script starts the server but then fails its own health check here (its
# maintenance account is not set up), so the server is run through mysqld_safe directly,
# detached, and "up" means it answers a query on 127.0.0.1:3306.
set -euo pipefail

up() { mysql -uroot -h127.0.0.1 -P3306 -e 'SELECT 1' >/dev/null 2>&1; }

wait_for() { # wait_for up|down, at most 60 s
  for _ in $(seq 1 600); do
    if [ "$1" = up ] && up; then return 0; fi
    if [ "$1" = down ] && ! pgrep -x mariadbd >/dev/null && ! pgrep -x mysqld >/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "MariaDB did not come $1 within 60 s" >&2
  return 1
}

start() {
  up && return 0
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  setsid mysqld_safe >/dev/null 2>&1 < /dev/null &
  wait_for up
}

case "${1:-start}" in
  start) start ;;
  restart)
    mysqladmin -uroot -h127.0.0.1 -P3306 shutdown
    wait_for down
    start
    ;;
  *) echo "usage: $0 start|restart" >&2; exit 2 ;;
esac

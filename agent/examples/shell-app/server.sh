#!/bin/sh
# A tiny HTTP app in shell: busybox nc listens on $PORT and runs ./handler.sh for every
# connection (-ll keeps listening), with the request on its stdin and its stdout as the reply.
cd "$(dirname "$0")"
echo "shell-app listening on port $PORT"
exec nc -ll -p "$PORT" -e ./handler.sh

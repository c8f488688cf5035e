#!/bin/sh
# One HTTP request: read the request line and the headers, answer with what the app knows
# about itself from its environment.
read -r method path version
while IFS= read -r header; do
    case "$header" in
    "" | "$(printf '\r')") break ;;
    esac
done
name=$(printf '%s' "$VCAP_APPLICATION" | sed -n 's/.*"application_name":"\([^"]*\)".*/\1/p')
body="Hello from shell-app!
app: $name
instance index: $CF_INSTANCE_INDEX
port: $PORT
address: $CF_INSTANCE_ADDR
memory limit: $MEMORY_LIMIT
request: $method $path
"
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "${#body}" "$body"

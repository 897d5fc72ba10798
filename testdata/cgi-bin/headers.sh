#!/bin/sh
# Echoes the forwarding headers the proxy set.
printf 'Content-Type: text/plain\r\n\r\n'
printf 'proto=%s host=%s for=%s\n' "$HTTP_X_FORWARDED_PROTO" "$HTTP_X_FORWARDED_HOST" "$HTTP_X_FORWARDED_FOR"

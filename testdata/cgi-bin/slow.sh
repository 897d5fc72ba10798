#!/bin/sh
# Slow endpoint: sleeps ?<seconds> (default 2), then answers a body of known length
# (64 lines of 64 bytes = 4096 bytes) so a test can check it arrived whole.
# Each start is logged to logs/slow.log first, so a test can wait until a slow
# request is really running at the server.
printf 'start %s\n' "$$" >> "$(dirname "$SCRIPT_FILENAME")/../logs/slow.log"
secs=${QUERY_STRING:-2}
case "$secs" in *[!0-9.]*|'') secs=2 ;; esac
sleep "$secs"
# ... and each end, with the time, just before the answer goes out.
printf 'end %s %s\n' "$$" "$(date +%s.%N)" >> "$(dirname "$SCRIPT_FILENAME")/../logs/slow.log"
printf 'Content-Type: text/plain\r\nContent-Length: 4096\r\n\r\n'
i=0
while [ $i -lt 64 ]; do
    printf '%063d\n' $i
    i=$((i + 1))
done

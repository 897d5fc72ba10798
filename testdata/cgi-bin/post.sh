#!/bin/sh
# POST endpoint: reads the body, appends the request's X-Request-Id to posts.log (one line
# per processed request, so a test can prove nothing was processed twice) and echoes a
# summary back.
body=$(head -c "${CONTENT_LENGTH:-0}")
printf '%s %s\n' "$HTTP_X_REQUEST_ID" "${#body}" >> "$(dirname "$SCRIPT_FILENAME")/../logs/posts.log"
printf 'Content-Type: text/plain\r\n\r\n'
printf 'id=%s len=%s pid=%s\n' "$HTTP_X_REQUEST_ID" "${#body}" "$$"

#!/bin/sh
# Writes the webhook URL from a secret file into a copy of alertmanager.yml, then runs Alertmanager
# on the copy. POSIX sh + awk (the Alertmanager image's busybox has both).
#
#   render-config.sh TEMPLATE URL_FILE OUTPUT [alertmanager flags...]
#
# Why not sed: a sed replacement reads & and the delimiter as syntax, and an unquoted YAML value
# ends at " #". Here the URL is never part of a program: awk takes it from the environment (not
# -v, which would read backslash escapes) and swaps the placeholder by position (index/substr,
# not sub, whose replacement reads &); it is written as a single-quoted YAML scalar, in which the
# only special character is ' itself, doubled. An empty or missing file keeps the placeholder
# (deliveries then fail visibly in Alertmanager's log), as does running without a webhook.
set -eu

PLACEHOLDER="http://rigwatch-webhook.invalid/alerts"

if [ "$#" -lt 3 ]; then
    echo "usage: $0 TEMPLATE URL_FILE OUTPUT [alertmanager flags...]" >&2
    exit 2
fi
template=$1 url_file=$2 output=$3
shift 3

url=""
if [ -r "$url_file" ]; then
    url=$(cat "$url_file")          # $(...) drops the trailing newline(s) an editor leaves
fi
case "$url" in
    *"
"*) echo "alertmanager: $url_file holds more than one line; expected one webhook URL" >&2; exit 1 ;;
esac
if [ -z "$url" ]; then
    echo "alertmanager: no webhook URL in $url_file: notifications go to the placeholder and fail" >&2
    url=$PLACEHOLDER
fi

WEBHOOK_URL=$url PLACEHOLDER=$PLACEHOLDER awk '
    BEGIN {
        q = sprintf("%c", 39)                     # a single quote
        url = ENVIRON["WEBHOOK_URL"]; out = ""
        while ((i = index(url, q)) > 0) { out = out substr(url, 1, i) q; url = substr(url, i + 1) }
        quoted = q out url q
        placeholder = ENVIRON["PLACEHOLDER"]; found = 0
    }
    {
        i = index($0, placeholder)
        if (i > 0) { $0 = substr($0, 1, i - 1) quoted substr($0, i + length(placeholder)); found++ }
        print
    }
    END { if (found != 1) { print "alertmanager: expected the webhook placeholder once, found " found > "/dev/stderr"; exit 1 } }
' "$template" > "$output"

if [ "$#" -eq 0 ]; then
    exit 0                                  # render only (the tests use this)
fi
exec /bin/alertmanager --config.file="$output" "$@"

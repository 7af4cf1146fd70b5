#!/bin/sh
# Creates the compose stack's secret files under ./secrets/ (`make secrets`); never overwrites one.
#   grafana_admin_password  random; log in to Grafana as admin with it
#   rigwatch_api_token      random; the bearer token for POST /api/v1/retrain
#   alert_webhook_url       empty; put your webhook URL in it (one line)
# The directory is 0700 (no other host user can reach the files); the files are 0644 because each
# container reads its secret as its own unprivileged user, and Docker bind-mounts them as they are.
set -eu
dir=${1:-secrets}
mkdir -p "$dir"
chmod 700 "$dir"
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
create() {  # create NAME VALUE
    if [ -e "$dir/$1" ]; then
        echo "kept    $dir/$1"
    else
        printf '%s\n' "$2" > "$dir/$1"
        chmod 644 "$dir/$1"
        echo "created $dir/$1"
    fi
}
create grafana_admin_password "$(random)"
create rigwatch_api_token "$(random)"
create alert_webhook_url ""

#!/bin/sh
# Creates the compose stack's secret files under ./secrets/ (`make secrets`); never overwrites one.
#   grafana_admin_password  random; log in to Grafana as admin with it
#   rigwatch_api_token      random; the bearer token for POST /api/v1/retrain
#   alert_webhook_url       empty; put your webhook URL in it (one line)
#   remote_write_password   random; a fleet's boxes write to the central box with it (copy the file
#                           to every box: docker-compose.agent.yml)
#   vmauth.yml              the central vmauth's config (docker-compose.central.yml), holding that
#                           password: made from the file, so the two always agree
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
create remote_write_password "$(random)"
# token_urlsafe is [A-Za-z0-9_-]: safe inside a double-quoted YAML scalar. Only the two write paths
# pass; queries stay inside the central box's network.
create vmauth.yml "# vmauth: the central box's one authenticated entry (made by scripts/init-secrets.sh)
users:
  - username: rigwatch
    password: \"$(cat "$dir/remote_write_password")\"
    url_map:
      - src_paths: [\"/api/v1/write\"]
        url_prefix: \"http://victoriametrics:9090\"
      - src_paths: [\"/loki/api/v1/push\"]
        url_prefix: \"http://loki:3100\""

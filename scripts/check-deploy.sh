#!/usr/bin/env bash
# Usage: scripts/check-deploy.sh
# Checks the shipped deploy files instead of only shipping them (run by scripts/test.sh):
#  - both systemd units pass `systemd-analyze verify` with no message at all, and
#    `systemd-analyze security` rates each at most MAX_EXPOSURE (2.0); the scores are printed and
#    recorded in deploy/README.md;
#  - the units keep LimitCORE=0 and stop workers before the coordinator (worker After= coordinator);
#  - deploy/nginx/vaultvec.conf passes `nginx -t` with a generated certificate, and a real nginx
#    running it on unix sockets (nothing but this machine) redirects HTTP to HTTPS and answers HTTPS
#    with HSTS.
# Installs systemd, nginx, openssl and curl with apt-get when missing (needs root there).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
MAX_EXPOSURE=2.0

need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [[ ${#need[@]} -gt 0 ]]; then
    echo "installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
PATH=$PATH:/usr/sbin

work=$(mktemp -d)
nginx_pid=""
cleanup() {
    if [[ -n $nginx_pid ]]; then kill "$nginx_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "check-deploy: $*" >&2
    exit 1
}

# --- systemd units -------------------------------------------------------------------------------
# A private root holds the system's units (for sysinit.target and friends), ours, and stand-in
# executables at the paths ExecStart names, so verify checks everything but the real binaries.
root=$work/root
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/usr/local/bin"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp deploy/vaultvec-coordinator.service deploy/vaultvec-worker@.service "$root/etc/systemd/system/"
for bin in vaultvec-coordinator vaultvec-worker; do
    printf '#!/bin/sh\n' >"$root/usr/local/bin/$bin"
    chmod 0755 "$root/usr/local/bin/$bin"
done
units=(vaultvec-coordinator.service vaultvec-worker@a.service)
# verify exits 0 on unknown keys and unparsable values (it only warns), so any output fails.
out=$(systemd-analyze verify --root="$root" --man=no "${units[@]}" 2>&1) || fail "systemd-analyze verify failed: $out"
[[ -z $out ]] || fail "systemd-analyze verify complained: $out"

for unit in "${units[@]}"; do
    report=$(systemd-analyze security --offline=true --root="$root" "$unit" 2>&1) || true
    score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$report")
    [[ -n $score ]] || fail "no exposure score for $unit: $report"
    echo "systemd-analyze security: $unit exposure $score (limit $MAX_EXPOSURE)"
    awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' ||
        fail "$unit exposure $score is above $MAX_EXPOSURE"
    grep -q "\`$unit\`.*| $score |" deploy/README.md ||
        fail "deploy/README.md does not record $unit's exposure $score"
done

for file in deploy/vaultvec-coordinator.service deploy/vaultvec-worker@.service; do
    grep -qx 'LimitCORE=0' "$file" || fail "$file lacks LimitCORE=0 (INV-08)"
done
# Stop order is the reverse of start order: a host shutdown stops the workers (whose checkpoint at
# close needs the coordinator's key service) before the coordinator.
grep -qE '^After=.*vaultvec-coordinator\.service' deploy/vaultvec-worker@.service ||
    fail "vaultvec-worker@.service is not ordered After=vaultvec-coordinator.service"

# --- nginx ---------------------------------------------------------------------------------------
# The shipped config with the certificate paths pointed at a generated certificate and the listeners
# moved to unix sockets; everything else is tested as shipped.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=vaultvec.example.com" -addext "subjectAltName=DNS:vaultvec.example.com" \
    -keyout "$work/privkey.pem" -out "$work/fullchain.pem" 2>/dev/null
sed -e "s|/etc/ssl/vaultvec/|$work/|" \
    -e "/listen \[::\]/d" \
    -e "s|listen 80;|listen unix:$work/http.sock;|" \
    -e "s|listen 443 |listen unix:$work/https.sock |" \
    -e "s|listen 8443 |listen unix:$work/grpc.sock |" \
    deploy/nginx/vaultvec.conf >"$work/vaultvec.conf"
grep -q "$work/http.sock" "$work/vaultvec.conf" || fail "deploy/nginx/vaultvec.conf has no 'listen 80;' server"
cat >"$work/nginx.conf" <<CONF
user root;
pid $work/nginx.pid;
error_log $work/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $work/body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    include $work/vaultvec.conf;
}
CONF
nginx -t -q -p "$work" -c "$work/nginx.conf" || fail "nginx -t refused deploy/nginx/vaultvec.conf"
echo "nginx -t: deploy/nginx/vaultvec.conf is valid"

# nginx binds its sockets before it daemonizes, so they accept connections once this returns.
nginx -p "$work" -c "$work/nginx.conf"
nginx_pid=$(cat "$work/nginx.pid")
headers=$(curl -sS -o /dev/null -D - --unix-socket "$work/http.sock" \
    -H 'Host: attacker.example' 'http://vaultvec.example.com/v1/collections?limit=1')
grep -qE '^HTTP/1\.1 301' <<<"$headers" || fail "HTTP is not redirected: $headers"
grep -qiF 'location: https://vaultvec.example.com/v1/collections?limit=1' <<<"$headers" ||
    fail "the redirect does not keep the path or names a client-chosen host: $headers"
# HTTPS answers (502: no coordinator behind it here) with HSTS on every answer.
headers=$(curl -sS -o /dev/null -D - --unix-socket "$work/https.sock" \
    --cacert "$work/fullchain.pem" --tlsv1.3 'https://vaultvec.example.com/v1/collections')
grep -qiE '^strict-transport-security: max-age=[0-9]+' <<<"$headers" || fail "HTTPS answer without HSTS: $headers"
echo "nginx: HTTP redirects to HTTPS; HTTPS sends HSTS"

#!/usr/bin/env bash
# Usage: sudo deploy/install.sh [WORKER_ID...]
# Installs vaultvec on this host: builds release binaries, creates the `vaultvec` user and
# /etc/vaultvec (0700) with generated secrets (0600), a coordinator config and one worker config per
# WORKER_ID (default: a), and the systemd units. Existing configs and secrets are never overwritten.
# Start with: systemctl enable --now vaultvec-coordinator vaultvec-worker@a
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "run as root (it writes /etc/vaultvec, /usr/local/bin and /etc/systemd/system)" >&2
    exit 1
fi
workers=("$@")
if [[ ${#workers[@]} -eq 0 ]]; then
    workers=(a)
fi

cargo build --locked --release -p coordinator -p worker
install -m 0755 target/release/vaultvec-coordinator target/release/vaultvec-worker /usr/local/bin/

if ! id vaultvec >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/vaultvec --shell /usr/sbin/nologin vaultvec
fi
install -d -m 0700 -o vaultvec -g vaultvec /etc/vaultvec /etc/vaultvec/secrets /var/lib/vaultvec

secret() { # secret FILE BYTES: random hex, created once
    local file=/etc/vaultvec/secrets/$1
    if [[ ! -e $file ]]; then
        (umask 077 && head -c "$2" /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file")
        chown vaultvec:vaultvec "$file"
    fi
}
secret pepper 32
secret audit.key 32
secret admin.token 24
if [[ ! -e /etc/vaultvec/secrets/root.key ]]; then
    (umask 077 && head -c 32 /dev/urandom >/etc/vaultvec/secrets/root.key)
    chown vaultvec:vaultvec /etc/vaultvec/secrets/root.key
fi
for w in "${workers[@]}"; do
    secret "worker-$w.token" 24
done

if [[ ! -e /etc/vaultvec/coordinator.toml ]]; then
    {
        sed -e 's|^data_dir = .*|data_dir = "/var/lib/vaultvec/coordinator"|' \
            -e 's|^pepper_file = .*|pepper_file = "/etc/vaultvec/secrets/pepper"|' \
            -e 's|^admin_token_file = .*|admin_token_file = "/etc/vaultvec/secrets/admin.token"|' \
            -e 's|^audit_key_file = .*|audit_key_file = "/etc/vaultvec/secrets/audit.key"|' \
            -e 's|^root_key_file = .*|root_key_file = "/etc/vaultvec/secrets/root.key"|' \
            -e '/^\[\[workers\]\]/,$d' coordinator/coordinator.example.toml
        for w in "${workers[@]}"; do
            printf '[[workers]]\nid = "%s"\ntoken_file = "/etc/vaultvec/secrets/worker-%s.token"\n\n' "$w" "$w"
        done
        sed -n '/^\[tiers/,$p' coordinator/coordinator.example.toml
    } >/etc/vaultvec/coordinator.toml
    chmod 0600 /etc/vaultvec/coordinator.toml
    chown vaultvec:vaultvec /etc/vaultvec/coordinator.toml
fi
for w in "${workers[@]}"; do
    config=/etc/vaultvec/worker-$w.toml
    if [[ ! -e $config ]]; then
        cat >"$config" <<TOML
worker_id = "$w"
coordinator_url = "ws://127.0.0.1:7702/v1/cluster"
token_file = "/etc/vaultvec/secrets/worker-$w.token"
data_dir = "/var/lib/vaultvec/worker-$w"
TOML
        chmod 0600 "$config"
        chown vaultvec:vaultvec "$config"
    fi
done

install -m 0644 deploy/vaultvec-coordinator.service deploy/vaultvec-worker@.service /etc/systemd/system/
systemctl daemon-reload
echo "installed; start with: systemctl enable --now vaultvec-coordinator ${workers[*]/#/vaultvec-worker@}"

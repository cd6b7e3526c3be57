#!/usr/bin/env bash
# Usage: bash scripts/browser-env.sh
#
# Installs what the dashboard's browser test (tests/it/dashboard/browser.rs) runs: headless
# Chromium and its WebDriver (Debian packages `chromium`, `chromium-driver`) and nginx (the
# deploy/ config serves the pages over TLS). Uses apt-get (as root) only for what is missing, so
# running it before every test run is cheap. selenium itself comes with tests/python/requirements.txt.
set -euo pipefail

need=()
[[ -x /usr/bin/chromium ]] || need+=(chromium)
[[ -x /usr/bin/chromedriver ]] || need+=(chromium-driver)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
if [[ ${#need[@]} -gt 0 ]]; then
    echo "browser-env: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

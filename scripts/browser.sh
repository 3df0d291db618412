#!/usr/bin/env bash
# Headless Chromium for the operator console's browser test (tests/e2e/test_console.py), from
# Debian's package: Playwright drives it with executable_path=/usr/bin/chromium, so Playwright's
# own browser downloads (which a closed network refuses) are never needed.
#
#   scripts/browser.sh install   apt-get install chromium if /usr/bin/chromium is missing
#   scripts/browser.sh path      print the browser's path (exit 1 if not installed)
#
# Environment: JOKKO_CHROMIUM (/usr/bin/chromium).
set -euo pipefail

CHROMIUM=${JOKKO_CHROMIUM:-/usr/bin/chromium}

log() { echo "browser.sh: $*" >&2; }

install() {
  if [[ -x $CHROMIUM ]]; then return 0; fi
  log "installing Debian's chromium package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
  [[ -x $CHROMIUM ]] || { log "chromium installed but $CHROMIUM is missing"; exit 1; }
}

case ${1:-install} in
  install) install ;;
  path) [[ -x $CHROMIUM ]] && echo "$CHROMIUM" ;;
  *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac

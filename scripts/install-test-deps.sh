#!/usr/bin/env bash
# System packages the test suite needs beyond pip: headless Chromium and its matching driver for
# the web chat browser test (tests/plugins/test_webchat_browser.py). Debian's packages, because
# Selenium Manager and `playwright install` download browsers, which a closed network forbids.
# Idempotent: does nothing when both are already installed. Needs root (or sudo) otherwise.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-test-deps: Chromium is missing and installing it needs root: run" >&2
        echo "  apt-get install -y chromium chromium-driver" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver

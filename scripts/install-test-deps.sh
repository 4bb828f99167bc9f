#!/usr/bin/env bash
# System packages the test suite needs beyond pip, from Debian's archive:
#   chromium, chromium-driver  the web chat browser test (tests/plugins/test_webchat_browser.py);
#                              Debian's, because Selenium Manager and `playwright install`
#                              download browsers, which a closed network forbids
#   python3-venv               Debian's python3 with venv: packaging/build-deb.sh builds the .deb's
#                              virtualenv with the interpreter the target runs (tests/packaging)
#   systemd                    systemd-analyze verify/security on the packaged unit (no init
#                              change: installing the package does not make it PID 1)
#   dovecot-imapd              the real IMAP server of gateway.testing.mailserver (email channel
#                              tests); run unprivileged from a generated config, never as a service
# Idempotent and quiet: installs only what is missing. Needs root (or sudo) when something is.
set -euo pipefail
browser=() tools=()
[ -x /usr/bin/chromium ] || browser+=(chromium)
[ -x /usr/bin/chromedriver ] || browser+=(chromium-driver)
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || tools+=(python3-venv)
[ -x /usr/bin/systemd-analyze ] || tools+=(systemd)
[ -x /usr/sbin/dovecot ] && [ -e /usr/lib/dovecot/imap ] || tools+=(dovecot-imapd)
missing=("${browser[@]}" "${tools[@]}")
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-test-deps: missing ${missing[*]} and installing needs root: run" >&2
        echo "  apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
if [ ${#browser[@]} -gt 0 ]; then
    # With recommends: fonts and GL libraries the headless browser renders with.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${browser[@]}" >/dev/null
fi
if [ ${#tools[@]} -gt 0 ]; then
    # Packages with a service (dovecot) must not start it: the tests run their own copy. A
    # policy-rc.d that says no (Debian's mechanism for this), only while we install.
    own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${tools[@]}" >/dev/null
    if [ -n "$own_policy" ]; then
        $SUDO rm -f /usr/sbin/policy-rc.d
    fi
fi

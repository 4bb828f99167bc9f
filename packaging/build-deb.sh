#!/usr/bin/env bash
# Build dist/sovereign-gateway_<version>_<arch>.deb: the gateway in its own virtualenv under
# /opt/sovereign-gateway, with the systemd unit, sysusers/tmpfiles files and a conffile config.
#
#   bash packaging/build-deb.sh                      # -> dist/
#   bash packaging/build-deb.sh --out DIR            # -> DIR/
#   bash packaging/build-deb.sh -- SPEC...           # also bundle these pip requirements
#                                                    #   (third-party plugins, e.g. "sg-foo==1.2")
#
# Needs: Debian's python3 (>= 3.11) with venv (python3-venv), dpkg-deb, and the package index
# (PyPI or a mirror pip is configured for) at BUILD time only: the .deb installs offline.
# PYTHON=/usr/bin/python3.X picks the interpreter; it must be the one the target runs, since
# the venv links to it and the wheels are built for its ABI.
#
# How the venv is made relocatable: it is created at its final path inside a staging root
# ($stage/opt/sovereign-gateway) by the target interpreter, so everything pip writes is laid out
# exactly as installed. Only absolute paths to the staging directory need fixing, and they are
# all in text files (script shebangs, activate*, pyvenv.cfg): they are rewritten with sed, then
# the build FAILS if any file, text or binary, still names the staging directory. Bytecode is
# compiled after that with the final paths (compileall -s/-p), because /opt is read-only under
# the unit's ProtectSystem=strict and Python could not cache it at run time. The interpreter
# links (bin/python3.X -> /usr/bin/python3.X) are already absolute paths on the target.
#
# DEB_COMPRESS=xz (default: smallest, ~1 min for this package) or zstd (dpkg >= 1.21.18, i.e.
# Debian 12+: a second, 40% larger) or gzip picks the .deb's compression.
#
# Dependency versions: when this checkout has a .venv, its `pip freeze` constrains the build, so
# the package ships the versions the test suite ran against; CONSTRAINTS=FILE overrides that and
# CONSTRAINTS=none builds from pyproject.toml's ranges alone.
set -euo pipefail
umask 022

NAME=sovereign-gateway
DEB_COMPRESS=${DEB_COMPRESS:-xz}
PREFIX=/opt/$NAME
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/dist
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --out=*) OUT=${1#--out=}; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "build-deb: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "build-deb: error: $*" >&2; exit 1; }
say() { echo "build-deb: [$SECONDS s] $*" >&2; }

for tool in dpkg-deb dpkg; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian package: dpkg)"
done

# --- the interpreter: Debian's, by its versioned path -----------------------------------------
PYTHON=${PYTHON:-/usr/bin/python3}
[ -x "$PYTHON" ] || die "$PYTHON not found; install Debian's python3 (apt-get install python3 python3-venv)"
PY_MINOR=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
TARGET_PYTHON=/usr/bin/python$PY_MINOR
case "$(readlink -f "$PYTHON")" in
    "$(readlink -f "$TARGET_PYTHON")") ;;
    *) die "$PYTHON is not Debian's $TARGET_PYTHON: the packaged venv must link to the interpreter the target installs (set PYTHON=/usr/bin/python3.X)" ;;
esac
"$TARGET_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$TARGET_PYTHON is Python $PY_MINOR; the gateway needs 3.11 or newer"
"$TARGET_PYTHON" -c 'import ensurepip' 2>/dev/null \
    || die "$TARGET_PYTHON has no venv support: apt-get install python3-venv (or python$PY_MINOR-venv)"

VERSION=$("$TARGET_PYTHON" -c 'import tomllib, sys; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")
# PEP 440 pre-releases sort before the release; in Debian only "~" does: 1.0rc1 -> 1.0~rc1.
DEB_VERSION=$(printf '%s' "$VERSION" | sed -E 's/[.-]?(a|b|rc|dev)([0-9]*)/~\1\2/g')
ARCH=$(dpkg --print-architecture)
DEB=$OUT/${NAME}_${DEB_VERSION}_${ARCH}.deb

WORK=$(mktemp -d "${TMPDIR:-/tmp}/build-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/root
VENV=$STAGE$PREFIX
mkdir -p "$STAGE/DEBIAN" "$WORK/src"

# --- the source: a snapshot, so the build never writes build/ or *.egg-info into the checkout --
(cd "$ROOT" && tar --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -cf - \
    pyproject.toml README.md gateway plugins $(ls -d LICENSE* MANIFEST.in setup.cfg 2>/dev/null || true)) \
    | tar -xf - -C "$WORK/src"

# --- the venv at its final path inside the staging root ----------------------------------------
say "building Python $PY_MINOR venv for $NAME $VERSION ($ARCH)"
"$TARGET_PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
CONSTRAINTS=${CONSTRAINTS:-}
if [ -z "$CONSTRAINTS" ] && [ -x "$ROOT/.venv/bin/python" ]; then
    # Lines "name @ URL" (local or VCS installs) cannot be constraints; the project is editable.
    "$ROOT/.venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check \
        | grep -v -e ' @ ' -e '^-e ' -e '^sovereign-gateway=' >"$WORK/constraints.txt" || true
    CONSTRAINTS=$WORK/constraints.txt
    say "pinning dependencies to $ROOT/.venv's versions"
fi
CONSTRAINT_ARGS=()
if [ -n "$CONSTRAINTS" ] && [ "$CONSTRAINTS" != none ]; then
    CONSTRAINT_ARGS=(--constraint "$CONSTRAINTS")
fi
say "installing the gateway and its dependencies (pip cache: $("${PIP[@]}" cache dir 2>/dev/null || echo off))"
"${PIP[@]}" install --quiet --no-compile "${CONSTRAINT_ARGS[@]}" "$WORK/src" "${EXTRA[@]}"
# Every file under /opt is dpkg's: no pip to change them behind its back (bundle plugins with
# `-- SPEC` instead), and no installer leftovers naming the build directory.
"${PIP[@]}" uninstall --quiet --yes pip setuptools
rm -f "$VENV"/lib/python*/site-packages/sovereign_gateway-*.dist-info/direct_url.json
find "$VENV" -name __pycache__ -prune -exec rm -rf {} +

# --- relocation: every absolute path to the staging root becomes the final one -----------------
grep -rlIF "$VENV" "$VENV" | while IFS= read -r file; do
    sed -i "s|$VENV|$PREFIX|g" "$file"
done
if left=$(grep -rlF "$WORK" "$STAGE"); then
    die "these files still name the build directory $WORK:"$'\n'"$left"
fi
say "byte-compiling"
"$VENV/bin/python" -m compileall -q -j0 -s "$STAGE" -p / "$VENV/lib" >/dev/null \
    || die "byte-compiling the venv failed"
# The whole daemon must import from the venv alone (-I: not from the checkout in the working
# directory; -B: no bytecode naming the staging path), or a dependency is missing from pyproject.
(cd / && "$VENV/bin/python" -I -B -c 'import gateway.app, gateway.cli') \
    || die "the packaged venv cannot import the gateway (a dependency missing from pyproject.toml?)"

# --- system integration -----------------------------------------------------------------------
P=$ROOT/packaging
install -D -m 0644 "$P/systemd/$NAME.service" "$STAGE/lib/systemd/system/$NAME.service"
install -D -m 0644 "$P/sysusers.d/$NAME.conf" "$STAGE/usr/lib/sysusers.d/$NAME.conf"
install -D -m 0644 "$P/tmpfiles.d/$NAME.conf" "$STAGE/usr/lib/tmpfiles.d/$NAME.conf"
mkdir -p "$STAGE/usr/bin"
ln -s "$PREFIX/bin/gateway" "$STAGE/usr/bin/gateway"
install -d -m 0755 "$STAGE/etc/$NAME"
{
    cat <<'EOF'
# Installed by the sovereign-gateway package (a conffile: upgrades keep your edits).
# Edit, check, then start:
#   gateway check-config /etc/sovereign-gateway/gateway.toml
#   systemctl enable --now sovereign-gateway
# Under systemd, give secrets as credential:NAME (LoadCredentialEncrypted=NAME in a drop-in:
# systemctl edit sovereign-gateway); env:NAME works only with Environment= in the unit.

EOF
    cat "$ROOT/config/gateway.example.toml"
} >"$STAGE/etc/$NAME/gateway.toml"
echo "/etc/$NAME/gateway.toml" >"$STAGE/DEBIAN/conffiles"
install -D -m 0644 "$ROOT/README.md" "$STAGE/usr/share/doc/$NAME/README.md"
cat >"$STAGE/usr/share/doc/$NAME/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: $NAME
Comment: $PREFIX bundles Python packages from PyPI, each under its own licence; see the
 *.dist-info/ directories in $PREFIX/lib/python$PY_MINOR/site-packages/.

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
EOF

# --- maintainer scripts and control -----------------------------------------------------------
for script in postinst prerm postrm; do
    sed -e "s|@PY_MINOR@|$PY_MINOR|g" -e "s|@PREFIX@|$PREFIX|g" -e "s|@NAME@|$NAME|g" \
        "$P/debian/$script" >"$STAGE/DEBIAN/$script"
    chmod 0755 "$STAGE/DEBIAN/$script"
done
INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat >"$STAGE/DEBIAN/control" <<EOF
Package: $NAME
Version: $DEB_VERSION
Architecture: $ARCH
Maintainer: Sovereign Gateway maintainers <maintainers@sovereign-gateway.invalid>
Installed-Size: $INSTALLED_SIZE
Depends: python$PY_MINOR, systemd
Section: net
Priority: optional
Python-Version: $PY_MINOR
Description: self-hosted AI messaging gateway
 Connects messaging channels (Telegram, web chat, ...) to AI agents and keeps every
 conversation on your own server in an encrypted database.
 .
 Bundles its Python dependencies in a virtualenv under $PREFIX, built for
 Python $PY_MINOR ($TARGET_PYTHON): it needs no network at install time. Runs as the
 hardened systemd service $NAME.service, not started until configured.
EOF

mkdir -p "$OUT"
say "compressing"
dpkg-deb --root-owner-group -Z"$DEB_COMPRESS" --threads-max="$(nproc)" --build "$STAGE" "$DEB" >/dev/null
say "built $DEB ($(du -h "$DEB" | cut -f1), installed $((INSTALLED_SIZE / 1024)) MiB)"
echo "$DEB"

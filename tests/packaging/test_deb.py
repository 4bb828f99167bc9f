"""The Debian package from packaging/build-deb.sh, built once for this module (about a minute
with a warm pip cache) and inspected as an operator's machine would see it.

Tools: dpkg-deb (Debian's essential dpkg), sh, systemd-analyze (``systemd``) and Debian's
python3 with venv (``python3-venv``); scripts/install-test-deps.sh installs the last two, so a
missing one fails here rather than skipping. Only the install/remove/purge test may skip: it
needs root and overlayfs (it installs into a throwaway copy-on-write view of this machine).
"""

from __future__ import annotations

import marshal
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/opt/sovereign-gateway"
UNIT = "lib/systemd/system/sovereign-gateway.service"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
DEBIAN_PYTHON = "/usr/bin/python3"


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found: run scripts/install-test-deps.sh (installs Debian's {package})"
        )
    return path


# Away from the checkout: `python -m`/`-c` put the working directory first on sys.path, where
# /work/main/gateway would hide the packaged one.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd="/", env=CLEAN_ENV
    )


@pytest.fixture(scope="module")
def python_minor() -> str:
    tool("dpkg-deb", "dpkg")
    if run(DEBIAN_PYTHON, "-c", "import ensurepip").returncode != 0:
        pytest.fail(f"{DEBIAN_PYTHON} has no venv: run scripts/install-test-deps.sh (python3-venv)")
    return run(
        DEBIAN_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"
    ).stdout.strip()


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory, python_minor: str) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        ["bash", str(REPO / "packaging/build-deb.sh"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        # zstd compresses in a second where the release default, xz, takes a minute; the
        # contents are the same.
        env={**os.environ, "PYTHON": DEBIAN_PYTHON, "DEB_COMPRESS": "zstd"},
    )
    assert build.returncode == 0, build.stderr[-6000:]
    assert build.stdout.strip().endswith(".deb"), build.stdout
    return Path(build.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tree(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("extracted")
    assert run("dpkg-deb", "-x", deb, root).returncode == 0
    return root


@pytest.fixture(scope="module")
def control_dir(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("control")
    assert run("dpkg-deb", "-e", deb, root / "DEBIAN").returncode == 0
    return root / "DEBIAN"


def test_name_and_control_fields(deb, python_minor):
    arch = run("dpkg", "--print-architecture").stdout.strip()
    assert deb.name == f"sovereign-gateway_{VERSION}_{arch}.deb"
    fields = dict(
        re.findall(r"^ ?([A-Za-z-]+): (.*)$", run("dpkg-deb", "-f", deb).stdout, re.MULTILINE)
    )
    assert fields["Package"] == "sovereign-gateway"
    assert fields["Version"] == VERSION
    assert fields["Architecture"] == arch
    # The venv links /usr/bin/python3.X: the exact minor, not any python3 >= 3.11.
    assert fields["Depends"] == f"python{python_minor}, systemd"
    assert fields["Python-Version"] == python_minor
    assert int(fields["Installed-Size"]) > 10_000  # KiB: the venv is in it


def test_contents_in_place_and_owned_by_root(deb):
    listing = run("dpkg-deb", "--contents", deb).stdout.splitlines()
    entries = {line.split()[5].removeprefix("."): line for line in listing}
    for path in (
        f"{PREFIX}/bin/gateway",
        f"{PREFIX}/pyvenv.cfg",
        f"/{UNIT}",
        "/usr/lib/sysusers.d/sovereign-gateway.conf",
        "/usr/lib/tmpfiles.d/sovereign-gateway.conf",
        "/etc/sovereign-gateway/gateway.toml",
        "/usr/share/doc/sovereign-gateway/copyright",
    ):
        assert path in entries, path
    assert entries["/usr/bin/gateway"].endswith(f"-> {PREFIX}/bin/gateway")
    assert all(" root/root " in line for line in listing)
    assert not [line for line in listing if line[0] != "l" and line[8] == "w"], "world-writable"
    # No pip: every file under /opt belongs to dpkg.
    assert f"{PREFIX}/bin/pip" not in entries


def test_conffile_is_the_example_config(tree, control_dir):
    assert (control_dir / "conffiles").read_text().split() == [
        "/etc/sovereign-gateway/gateway.toml"
    ]
    shipped = (tree / "etc/sovereign-gateway/gateway.toml").read_text()
    assert shipped.endswith((REPO / "config/gateway.example.toml").read_text())
    assert 'data_dir = "/var/lib/sovereign-gateway"' in shipped  # the unit's StateDirectory


def test_maintainer_scripts_parse_and_are_filled_in(control_dir, python_minor):
    for name in ("postinst", "prerm", "postrm"):
        script = control_dir / name
        assert os.access(script, os.X_OK), name
        check = run("sh", "-n", script)
        assert check.returncode == 0, f"{name}: {check.stderr}"
        assert "@" not in re.sub(r"\S+@\S+", "", script.read_text()), f"{name}: placeholder left"
    assert f"PY_MINOR={python_minor}\n" in (control_dir / "postinst").read_text()


def unit_root(tree: Path, tmp_path: Path) -> Path:
    """A root for ``systemd-analyze --root``: this host's units (sysinit.target, ...), the
    packaged unit, and the programs of ExecStart and ExecReload (verify checks they are
    executable)."""
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True)
    shutil.copy(tree / UNIT, root / UNIT)
    (root / PREFIX.lstrip("/") / "bin").mkdir(parents=True)
    shutil.copy2(tree / PREFIX.lstrip("/") / "bin/gateway", root / PREFIX.lstrip("/") / "bin")
    (root / "bin").mkdir()
    shutil.copy2("/bin/kill", root / "bin/kill")  # ExecReload=/bin/kill -HUP $MAINPID
    return root


def test_unit_passes_systemd_analyze_verify(tree, tmp_path):
    analyze = tool("systemd-analyze", "systemd")
    root = unit_root(tree, tmp_path)
    # verify exits 0 on unknown keys and bad values, only warning: any output is a failure.
    result = run(analyze, "verify", f"--root={root}", "sovereign-gateway.service")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    # The sandbox stays tight: systemd's own exposure score (0 best, 10 worst) at most 2.0.
    security = run(
        analyze, "security", "--offline=yes", f"--root={root}", "--threshold=20",
        "sovereign-gateway.service",
    )  # fmt: skip
    assert security.returncode == 0, security.stdout[-3000:]


def test_unit_settings(tree):
    unit = (tree / UNIT).read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "User=gateway",
        f"ExecStart={PREFIX}/bin/gateway run --config /etc/sovereign-gateway/gateway.toml",
        "LoadCredentialEncrypted=gateway-master-key",
        "StateDirectory=sovereign-gateway",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "MemoryMax=512M",
    ):
        assert f"\n{line}\n" in unit, line


def test_packaged_venv_runs_from_its_files(tree, python_minor):
    venv = tree / PREFIX.lstrip("/")
    python = venv / "bin/python"
    assert os.path.realpath(python) == os.path.realpath(f"/usr/bin/python{python_minor}")
    # Scripts name the final path; run from the extracted copy, bin/python finds pyvenv.cfg next
    # to itself, so this copy is a complete venv wherever it sits.
    assert (venv / "bin/gateway").read_text().startswith(f"#!{PREFIX}/bin/python\n")
    cfg = (venv / "pyvenv.cfg").read_text()
    assert f"command = /usr/bin/python{python_minor} -m venv {PREFIX}\n" in cfg, cfg
    version = run(python, "-m", "gateway", "--version")
    assert version.stdout.strip() == f"gateway {VERSION}", version.stderr
    where = run(python, "-c", "import sys, gateway; print(sys.prefix); print(gateway.__file__)")
    prefix, module = where.stdout.split()
    assert prefix == str(venv) and module.startswith(str(venv)), where.stdout
    # The whole daemon imports: a dependency used but missing from pyproject.toml fails here.
    imports = run(python, "-c", "import gateway.app, gateway.cli")
    assert imports.returncode == 0, imports.stderr[-3000:]
    plugins = run(python, venv / "bin/gateway", "plugins")
    assert plugins.returncode == 0 and "failed to load" not in plugins.stdout, plugins.stdout
    for name in ("telegram", "webchat", "openai", "faq"):
        assert re.search(rf"^  {name} ", plugins.stdout, re.MULTILINE), name


def test_bytecode_names_the_final_paths(tree, python_minor):
    """compileall ran with the final paths: tracebacks name /opt/..., and Python, which cannot
    write under ProtectSystem=strict, finds the bytecode valid."""
    tag = f"cpython-{python_minor.replace('.', '')}"
    pyc = next(
        (tree / PREFIX.lstrip("/")).glob(
            f"lib/python*/site-packages/gateway/__pycache__/cli.{tag}.pyc"
        )
    )
    code = marshal.loads(pyc.read_bytes()[16:])
    assert code.co_filename == f"{PREFIX}/lib/python{python_minor}/site-packages/gateway/cli.py"


async def test_packaged_daemon_starts_and_stops(tree, tmp_path):
    venv = tree / PREFIX.lstrip("/")
    env = {
        **CLEAN_ENV,
        "GATEWAY_PUBLIC_BIND": "127.0.0.1:0",
        "GATEWAY_ADMIN_BIND": "127.0.0.1:0",
        "GATEWAY_MASTER_KEY": "5a" * 32,
        "OPENAI_API_KEY": "",
        "CREDENTIALS_DIRECTORY": "",
        "PYTHONUNBUFFERED": "1",
    }
    process = await trio.lowlevel.open_process(
        [str(venv / "bin/python"), str(venv / "bin/gateway"), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    output = b""
    try:
        assert process.stdout is not None
        with trio.fail_after(60):
            while b"is running" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, output.decode(errors="replace")
                output += chunk
        process.terminate()
        with trio.fail_after(30):
            assert await process.wait() == 0
    finally:
        process.kill()
        await process.wait()
    assert "key from environment variable GATEWAY_MASTER_KEY" in output.decode()


def overlay_prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("unshare") or "overlay" not in Path("/proc/filesystems").read_text():
        return "needs unshare and overlayfs"
    return None


INSIDE = """
set -eu
dpkg -i /pkg.deb
id gateway
stat -c '%U:%G %a' /var/lib/sovereign-gateway > /out/data-dir
gateway --version > /out/version
# The shipped config, with every env: secret it names set, is valid and inits as the service user.
runuser -u gateway -- env {env} gateway init --config /etc/sovereign-gateway/gateway.toml
stat -c '%U' /var/lib/sovereign-gateway/gateway.db > /out/db
# Shipped bytecode was valid: root, who may write under /opt, rewrote none of it.
{prefix}/bin/python -c "import gateway.app"
find {prefix} -name '*.pyc' -newer /pkg.deb | wc -l > /out/stale-pyc
dpkg -r sovereign-gateway 2> /out/remove
test -f /var/lib/sovereign-gateway/gateway.db
test ! -e {prefix}
dpkg -P sovereign-gateway 2> /out/purge
test ! -e /var/lib/sovereign-gateway
test ! -e /etc/sovereign-gateway
"""


def test_install_init_remove_purge(deb, tmp_path):
    """dpkg -i / -r / -P for real, in a copy-on-write view of this machine (overlayfs in a private
    mount namespace): the host's files and user database are never touched. Stands in for a
    debootstrap chroot, which would cost minutes and a download per run."""
    missing = overlay_prerequisites()
    if missing:
        pytest.skip(f"install test {missing}")
    names = re.findall(
        r'^[^#\n]*"env:([A-Z0-9_]+)"',
        (REPO / "config/gateway.example.toml").read_text(),
        re.MULTILINE,
    )
    upper, work, merged, out = (tmp_path / d for d in ("upper", "work", "merged", "out"))
    for d in (upper, work, merged, out):
        d.mkdir()
    inside = tmp_path / "inside.sh"
    inside.write_text(
        INSIDE.format(env=" ".join(f"{n}=123456:dummy-secret" for n in names), prefix=PREFIX)
    )
    setup = f"""
set -e
mount -t overlay overlay -o lowerdir=/,upperdir={upper},workdir={work} {merged} || exit 77
mount --rbind /proc {merged}/proc
mount --rbind /dev {merged}/dev
mkdir -p {merged}/out && mount --bind {out} {merged}/out
cp {deb} {merged}/pkg.deb
cp {inside} {merged}/inside.sh
exec chroot {merged} sh /inside.sh
"""
    passwd = Path("/etc/passwd").read_bytes()
    result = run("unshare", "--mount", "--propagation", "private", "sh", "-c", setup)
    if result.returncode == 77:
        pytest.skip(f"install test: cannot mount an overlay of /: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "data-dir").read_text().split() == ["gateway:gateway", "700"]
    assert (out / "version").read_text().strip() == f"gateway {VERSION}"
    assert (out / "db").read_text().split() == ["gateway"]
    assert (out / "stale-pyc").read_text().strip() == "0"
    assert "data in /var/lib/sovereign-gateway" in (out / "remove").read_text()
    assert "DELETING /var/lib/sovereign-gateway" in (out / "purge").read_text()
    assert Path("/etc/passwd").read_bytes() == passwd  # the host gained no user

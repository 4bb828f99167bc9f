"""``gateway init``: the first-run wizard.

With a config file that exists it only makes what is missing (master key, database, owner).
Without one it asks a few questions (or takes them as flags with ``--non-interactive``), writes
a commented config, validates it, creates the master key (a systemd credential when it can, else
a 0600 file), the encrypted database and the owner user, and prints the next steps.

Secrets are never asked for: the config names where each one will come from (``env:NAME`` or
``credential:NAME``), and the next steps say how to put it there.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from pathlib import Path
from typing import Any

import trio
from pydantic import BaseModel

from gateway import users, users_cli
from gateway.config import GatewayConfig, load_config
from gateway.errors import GatewayError, MasterKeyError
from gateway.keys import DATABASE_FILE, MasterKey, key_banner, load_master_key
from gateway.keys_cli import CREDSTORE, create_master_key
from gateway.plugin import Registry
from gateway.secretref import Secret

SERVICE_USER = "gateway"
UNIT = "sovereign-gateway.service"
UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "init", help="first run: write a config, create key, database and owner (asks, or flags)"
    )
    p.add_argument("--config", "-c", metavar="FILE", help="config to use or write")
    p.add_argument("--non-interactive", action="store_true", help="take every answer from flags")
    p.add_argument("--data-dir", help="where the encrypted database lives")
    p.add_argument("--public-url", help="https URL platforms and browsers reach the gateway at")
    p.add_argument("--channel", choices=["webchat", "telegram"], help="the first channel")
    p.add_argument("--provider", choices=["faq", "openai", "anthropic"], help="the first model")
    p.add_argument("--model", help="model name for openai/anthropic")
    p.add_argument("--base-url", help="OpenAI-compatible server URL (a local one keeps data here)")
    p.add_argument("--owner-email", help="create this owner user")
    p.add_argument("--owner-password-stdin", action="store_true", help="owner password on stdin")
    p.add_argument(
        "--key-to",
        choices=["auto", "credential", "file"],
        default="auto",
        help="where the new master key goes (auto: a systemd credential when the packaged "
        "service is installed and this runs as root, else a 0600 file in data_dir)",
    )
    p.add_argument("--credstore", type=Path, default=CREDSTORE, help=argparse.SUPPRESS)


def default_config_path() -> Path:
    return (
        Path("/etc/sovereign-gateway/gateway.toml") if os.geteuid() == 0 else Path("gateway.toml")
    )


class Asker:
    """Questions on the terminal, or the flags' answers without asking."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive

    def ask(self, question: str, given: str | None, default: str) -> str:
        if given is not None or not self.interactive:
            return given if given is not None else default
        answer = input(f"{question} [{default}]: ").strip()
        return answer or default

    def choose(self, question: str, given: str | None, choices: list[str]) -> str:
        while True:
            answer = self.ask(f"{question} ({'/'.join(choices)})", given, choices[0])
            if answer in choices:
                return answer
            if not self.interactive:
                raise GatewayError(f"{answer!r} is not one of {', '.join(choices)}")
            print(f"  please answer one of: {', '.join(choices)}")


def render_config(
    *,
    data_dir: str,
    public_url: str,
    channel: str,
    provider: str,
    model: str,
    base_url: str,
    secret_prefix: str,
) -> str:
    """A commented config for the answers (every key explained in config/gateway.example.toml)."""

    def ref(name: str) -> str:
        if secret_prefix == "credential":
            return f"credential:{name}"
        return f"env:{name.upper().replace('-', '_')}"

    lines = [
        "# Sovereign Gateway, written by `gateway init`. Every key is explained in",
        "# /usr/share/doc/sovereign-gateway/gateway.example.toml (config/ in the source).",
        "# Secrets are references (env:NAME, credential:NAME, file:PATH), never values.",
        "",
        "[gateway]",
        f'data_dir = "{data_dir}"              # the encrypted database and attachments',
        "",
        "[http]",
        'public_bind = "127.0.0.1:8080"            # put a TLS reverse proxy in front of it',
        'admin_bind = "127.0.0.1:8081"             # admin UI, /metrics: keep it on loopback',
    ]
    if public_url:
        lines.append(
            f'public_url = "{public_url}"   # how platforms and browsers reach public_bind'
        )
    lines += ["", "[channels.main]"]
    if channel == "telegram":
        lines += [
            'plugin = "telegram"',
            f'token = "{ref("telegram-token")}"   # the token @BotFather gave you',
            'mode = "polling"                          # "webhook" needs public_url and a secret',
        ]
    else:
        lines += [
            'plugin = "webchat"                        # the page: {public_url}/chat/main/',
            'title = "Chat with us"',
        ]
    lines += [
        'agent = "default"',
        "",
        "[agents.default]",
        f'provider = "{provider}"',
        'system_prompt = "You are the support assistant of our company. Answer briefly and '
        'politely; say so when you do not know."',
        'fallback_text = "Sorry, we cannot answer right now. A person will get back to you."',
        "",
        f"[providers.{provider}]",
    ]
    if provider == "faq":
        lines += [
            'plugin = "faq"                            # offline answers from a Markdown FAQ',
            '# knowledge = "faq.md"                  # your own questions and answers',
        ]
    elif provider == "openai":
        lines += [
            'plugin = "openai"',
            f'base_url = "{base_url}"',
            f'api_key = "{ref("openai-api-key")}"',
            f'model = "{model}"',
            'region = "US"                             # where the model runs (transfer log)',
        ]
    else:
        lines += [
            'plugin = "anthropic"',
            f'api_key = "{ref("anthropic-api-key")}"',
            f'model = "{model}"',
            'region = "US"',
        ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, registry: Registry) -> int:
    path = Path(args.config) if args.config else default_config_path()
    interactive = not args.non_interactive and sys.stdin.isatty()
    asker = Asker(interactive)
    wrote = False
    if not path.exists():
        wrote = True
        write_config(path, args, asker)
    config = load_config(path, registry, defer_secrets=True, managed="try")
    master = ensure_key(config, args)
    trio.run(create_database, config, master)
    print(f"encrypted database ready: {config.data_dir / DATABASE_FILE}")
    owner = args.owner_email
    if owner is None and interactive:
        owner = input("email of the owner (the first admin user) [skip]: ").strip() or None
    if owner:
        create_owner(config, master, owner, args.owner_password_stdin)
    hand_over(config.data_dir)
    next_steps(path, config, wrote)
    return 0


def write_config(path: Path, args: argparse.Namespace, asker: Asker) -> None:
    if asker.interactive:
        print(f"No config at {path}: a few questions to write one (Enter takes the default).")
    root = os.geteuid() == 0
    data_dir = asker.ask(
        "data directory",
        args.data_dir,
        "/var/lib/sovereign-gateway" if root else str(Path("gateway-data").resolve()),
    )
    public_url = asker.ask("public https URL (empty: none yet)", args.public_url, "")
    channel = asker.choose("first channel", args.channel, ["webchat", "telegram"])
    provider = asker.choose("model provider", args.provider, ["faq", "openai", "anthropic"])
    model, base_url = "", ""
    if provider == "openai":
        base_url = asker.ask("OpenAI-compatible URL", args.base_url, "https://api.openai.com/v1")
        model = asker.ask("model", args.model, "gpt-4o-mini")
    elif provider == "anthropic":
        model = asker.ask("model", args.model, "claude-3-5-haiku-latest")
    text = render_config(
        data_dir=data_dir,
        public_url=public_url,
        channel=channel,
        provider=provider,
        model=model,
        base_url=base_url,
        secret_prefix="credential" if root else "env",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    print(f"config written: {path}")


def ensure_key(config: GatewayConfig, args: argparse.Namespace) -> MasterKey:
    try:
        master = load_master_key(config.data_dir, reference=config.gateway.master_key, create=False)
        print(f"master key already present: {master.source}")
        return master
    except MasterKeyError:
        pass
    if (config.data_dir / DATABASE_FILE).exists():
        raise GatewayError(
            f"{config.data_dir / DATABASE_FILE} exists but no master key was found: a new key "
            "would not open it. Restore the key (see `gateway keys status`)"
        )
    target = args.key_to
    if target == "auto":
        # A credential only helps the packaged unit, which loads it (LoadCredentialEncrypted=);
        # a gateway started by hand could not read it, so it gets the 0600 file.
        packaged = any(Path(d, UNIT).exists() for d in UNIT_DIRS)
        target = "credential" if packaged and os.geteuid() == 0 else "file"
    master = create_master_key(config, target, args.credstore)
    if master.source.startswith("key file"):
        print(key_banner(master), file=sys.stderr)
    return master


async def create_database(config: GatewayConfig, master: MasterKey) -> None:
    from gateway.store import open_store

    async with open_store(config.data_dir / DATABASE_FILE, master.derive("sqlcipher")):
        pass


def create_owner(
    config: GatewayConfig, master: MasterKey, email: str, password_stdin: bool
) -> None:
    from gateway.store.db import connect

    db = connect(config.data_dir / DATABASE_FILE, master.derive("sqlcipher"))
    try:
        owners = db.conn.execute(
            "SELECT count(*) FROM users WHERE role = 'owner' AND deactivated_at IS NULL"
        ).fetchone()[0]
        if owners:
            print("an owner exists already; add more users with `gateway users add`")
            return
        password = users_cli.read_password(password_stdin)
        with db.conn:
            new = users.add_user(db.conn, email, password, "owner", created_by="init")
        print(f"owner {users.normalise_email(email)} created")
        users_cli.print_enrolment(new, users.normalise_email(email))
    finally:
        db.conn.close()


def secret_references(config: GatewayConfig) -> list[str]:
    """Every secret the config names (env:NAME, credential:NAME...), for the next steps."""
    found = set()
    models: list[BaseModel] = [e.config for e in config.channels.values()]
    models += [e.config for e in config.providers.values()]
    for model in models:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, Secret):
                found.add(value.reference)
    return sorted(found)


def hand_over(data_dir: Path) -> None:
    """Run as root for the packaged service: the data must belong to the service's user."""
    if os.geteuid() != 0:
        return
    try:
        account = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return
    for root, dirs, files in os.walk(data_dir):
        for name in [root, *(os.path.join(root, n) for n in (*dirs, *files))]:
            os.chown(name, account.pw_uid, account.pw_gid)


def next_steps(path: Path, config: GatewayConfig, wrote: bool) -> None:
    print("\nnext steps:")
    step = 1
    if wrote:
        print(f"  {step}. read and adjust {path}")
        step += 1
    refs = secret_references(config)
    if refs:
        print(f"  {step}. provide the secrets the config names: {', '.join(refs)}")
        print("     env:NAME: set it in the service's environment; credential:NAME (preferred):")
        print("       systemd-creds encrypt --name=NAME - /etc/credstore.encrypted/NAME")
        print("       and LoadCredentialEncrypted=NAME in `systemctl edit sovereign-gateway`")
        step += 1
    print(f"  {step}. check everything: gateway doctor --config {path}")
    step += 1
    if os.geteuid() == 0:
        print(f"  {step}. start it: systemctl enable --now sovereign-gateway")
    else:
        print(f"  {step}. start it: gateway run --config {path}")

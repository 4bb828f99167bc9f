"""``gateway`` command line: run | init | check-config | plugins."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import trio

from gateway import (
    __version__,
    api_cli,
    audit_cli,
    backup_cli,
    conversations_cli,
    incidents_cli,
    init_cli,
    keys_cli,
    report_cli,
    retention_cli,
    secrets_cli,
    users_cli,
)
from gateway.config import EMBEDDED, GatewayConfig, load_config
from gateway.errors import GatewayError
from gateway.keys import key_banner
from gateway.logs import setup_logging
from gateway.plugin import Registry, load_registry
from gateway.privacy import dsr_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Sovereign Gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="start the gateway (embedded default without --config)")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    init_cli.add_parser(sub)
    p = sub.add_parser("check-config", help="validate a config file without starting")
    p.add_argument("file", nargs="?", metavar="FILE", help="TOML config file (default: embedded)")
    p = sub.add_parser("plugins", help="list the channel and LLM plugins found")
    p.add_argument("--verbose", "-v", action="store_true", help="show each plugin's config keys")
    p = sub.add_parser("doctor", help="check config, key, database, disk, clock, channels, models")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")

    conversations_cli.add_parser(sub)
    keys_cli.add_parser(sub)
    secrets_cli.add_parser(sub)  # the vault: store:NAME secrets
    users_cli.add_parser(sub)
    api_cli.add_parser(sub)  # developer API: projects, keys
    retention_cli.add_parser(sub)
    backup_cli.add_parser(sub)  # backup, restore
    audit_cli.add_parser(sub)
    incidents_cli.add_parser(sub)
    report_cli.add_parser(sub)
    dsr_cli.add_parser(sub)  # requests, export, erase, rectify, restrict, object, consent

    args = parser.parse_args(argv)
    registry = load_registry()
    try:
        if args.command == "plugins":
            return cmd_plugins(registry, args.verbose)
        if args.command == "check-config":
            return cmd_check_config(args.file, registry)
        if args.command == "doctor":
            from gateway import doctor

            return doctor.run(args.config, registry)
        if args.command == "init":
            return init_cli.run(args, registry)
        # Commands that never talk to a platform or a model do not need their secrets.
        offline = args.command in (
            "users",
            "api",
            "conversations",
            "keys",
            "secrets",
            "retention",
            "holds",
            "backup",
            "restore",
            "audit",
            "incidents",
            "report",
            *dsr_cli.COMMANDS,
        )
        # Offline commands must work when the vault cannot be read (key rotation mid-way).
        config = load_config(
            args.config, registry, defer_secrets=offline, managed="try" if offline else "auto"
        )
        if args.command == "users":
            return users_cli.run(config, args)
        if args.command == "api":
            return api_cli.run(config, args)
        if args.command == "conversations":
            return conversations_cli.run(config, args)
        if args.command == "keys":
            return keys_cli.run(config, args)
        if args.command == "secrets":
            return secrets_cli.run(config, args)
        if args.command in ("retention", "holds"):
            return retention_cli.run(config, args)
        if args.command in ("backup", "restore"):
            return backup_cli.run(config, args)
        if args.command == "audit":
            return audit_cli.run(config, args)
        if args.command == "incidents":
            return incidents_cli.run(config, args)
        if args.command == "report":
            return report_cli.run(config, args)
        if args.command in dsr_cli.COMMANDS:
            return dsr_cli.run(config, args)
        return cmd_run(config, registry)
    except GatewayError as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 2


def cmd_plugins(registry: Registry, verbose: bool) -> int:
    for title, table in (("channels", registry.channels), ("llm providers", registry.providers)):
        print(f"{title}:")
        for name, info in sorted(table.items()):
            print(f"  {name:<12} {info.source}")
            if verbose:
                for key, field in info.cls.Config.model_fields.items():
                    print(f"      {key}: {field.description or ''}")
    if registry.failures:
        print("failed to load:")
        for name, error in sorted(registry.failures.items()):
            print(f"  {name}: {error}")
    return 0


def cmd_check_config(file: str | None, registry: Registry) -> int:
    # Without the master key (another user than the service's) the admin UI's tables cannot be
    # read: the file is still checked, and a warning says what was not.
    config = load_config(file, registry, managed="try")
    print(f"{config.source}: OK")

    def ui(kind: str, name: str) -> str:
        return " (admin UI)" if f"{kind}.{name}" in config.managed else ""

    for name, entry in config.channels.items():
        state = "" if entry.config.enabled else " (disabled)"
        print(
            f"  channel  {name}: {entry.plugin.name}, agent {entry.config.agent}{state}"
            + ui("channels", name)
        )
    for name, agent in config.agents.items():
        print(f"  agent    {name}: provider {agent.provider}{ui('agents', name)}")
    for name, provider in config.providers.items():
        print(f"  provider {name}: {provider.plugin.name}{ui('providers', name)}")
    print(f"  data_dir {config.data_dir}")
    return 0


def cmd_run(config: GatewayConfig, registry: Registry) -> int:
    setup_logging(config)
    log = logging.getLogger("gateway")
    from gateway import stalls
    from gateway.app import Running, serve
    from gateway.reload import reload_from_disk

    async def _main() -> None:
        stop = trio.Event()
        # One reload waits at most: the file is read when it starts, so a SIGHUP arriving while
        # one waits adds nothing. A SIGHUP during start-up is applied once started.
        request_reload, reload_requests = trio.open_memory_channel[None](1)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:

                async def _watch() -> None:
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            log.info("SIGHUP received: reloading %s", config.source)
                            try:
                                request_reload.send_nowait(None)
                            except trio.WouldBlock:
                                pass
                            continue
                        if stop.is_set():
                            log.warning("second %s: stopping now", signal.Signals(signum).name)
                            nursery.cancel_scope.cancel()
                            return
                        log.info("%s received", signal.Signals(signum).name)
                        stop.set()

                nursery.start_soon(_watch)

                async def _serve(*, task_status: trio.TaskStatus[Running]) -> None:
                    await serve(config, stop=stop, registry=registry, task_status=task_status)
                    # serve returns by itself after draining; the watcher must not outlive it.
                    nursery.cancel_scope.cancel()

                running: Running = await nursery.start(_serve)
                _announce(config, running)
                # Here, not in serve(): faulthandler's watchdog is the process's, and a test
                # running serve() in its own trio run would never see all its tasks blocked.
                nursery.start_soon(stalls.watch, running.pipeline.metrics)
                # Until serve returns (which cancels this): the same registry and environment
                # as at start-up, one reload at a time.
                async for _ in reload_requests:
                    await reload_from_disk(running.reloader, registry)

    try:
        trio.run(_main)
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C during start-up
        return 130
    except BaseExceptionGroup as group:
        # A start-up error (wrong key, port in use) arrives wrapped by the nurseries.
        errors, rest = group.split((GatewayError, OSError))
        if errors is None or rest is not None:
            raise
        for exc in _leaves(errors):
            print(f"gateway: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _announce(config: GatewayConfig, running: object) -> None:
    from gateway.app import Running

    assert isinstance(running, Running)
    if running.master_key.created:
        print(key_banner(running.master_key), file=sys.stderr, flush=True)
    lines = [
        "",
        f"Sovereign Gateway {__version__} is running ({config.source if config.source != EMBEDDED else 'embedded default config'})",
        f"  data:      {config.data_dir} (SQLCipher, key from {running.master_key.source})",
        f"  public:    {', '.join(running.public_urls)}",
        f"  admin:     {', '.join(running.admin_urls)}",
    ]
    for name, url in running.chat_urls.items():
        lines.append(f"  web chat:  {url}   <- open this in a browser ({name})")
    provider_names = {a.provider for a in config.agents.values()}
    if (
        "faq" in provider_names
        and not os.environ.get("OPENAI_API_KEY")
        and config.source == EMBEDDED
    ):
        lines.append("  AI:        offline FAQ answers (set OPENAI_API_KEY to use a real model)")
    lines.append("  stop with Ctrl-C (SIGTERM drains in-flight work first)")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

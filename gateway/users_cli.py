"""``gateway users``: create the first owner and manage admin users from a shell.

::

    gateway users add owner@example.com --role owner      # asks for the password twice
    gateway users list
    gateway users passwd EMAIL | reset-2fa EMAIL | deactivate EMAIL
    gateway users confirm-2fa EMAIL --code 123456         # finish TOTP enrolment from a shell

A new user's TOTP seed (as an ``otpauth://`` URI and as text) and ten recovery codes are shown
once, then only their hashes remain.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from gateway import users
from gateway.cli_db import open_database
from gateway.config import GatewayConfig
from gateway.errors import GatewayError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("users", help="admin users: add, list, passwd, reset-2fa, deactivate")
    p.add_argument(
        "action", choices=["add", "list", "passwd", "reset-2fa", "confirm-2fa", "deactivate"]
    )
    p.add_argument("email", nargs="?", help="the user's email (their sign-in name)")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    p.add_argument("--role", choices=users.ROLES, default="agent", help="add: the user's role")
    p.add_argument("--name", help="add: display name")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="add/passwd: read the password from the first line of stdin (for scripts)",
    )
    p.add_argument("--code", help="confirm-2fa: a current 6-digit code from the authenticator")


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise GatewayError("--password-stdin: stdin is empty")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise GatewayError("no terminal to ask for a password: use --password-stdin")
    first = getpass.getpass("password (12+ characters): ")
    if getpass.getpass("again: ") != first:
        raise GatewayError("the passwords differ; nothing was changed")
    return first


def print_enrolment(new: users.NewUser, email: str) -> None:
    assert new.totp_secret is not None
    grouped = " ".join(new.totp_secret[i : i + 4] for i in range(0, len(new.totp_secret), 4))
    print(
        f"two-factor sign-in for {email}: add this to an authenticator app (TOTP, 6 digits, 30 s)"
    )
    print(f"  {new.totp_uri}")
    print(f"  or type the key: {grouped}")
    print("recovery codes (each works once; store them offline, they are not shown again):")
    for code in new.recovery_codes:
        print(f"  {code}")


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    if args.action != "list" and not args.email:
        raise GatewayError(f"`gateway users {args.action}` needs an email")
    with open_database(config, migrate=True) as db:
        conn = db.conn
        if args.action == "list":
            print(f"{'id':>4}  {'email':<32} {'role':<8} {'2fa':<10} {'state':<12} created")
            for u in users.list_users(conn):
                print(
                    f"{u.id:>4}  {u.email:<32} {u.role:<8} "
                    f"{'on' if u.totp_confirmed else 'pending':<10} "
                    f"{'deactivated' if u.deactivated else 'active':<12} {u.created_at}"
                )
            return 0
        if args.action == "add":
            password = read_password(args.password_stdin)
            with conn:
                new = users.add_user(
                    conn, args.email, password, args.role, display_name=args.name, created_by="cli"
                )
            email = users.normalise_email(args.email)
            print(f"user {email} created with role {args.role}")
            print_enrolment(new, email)
            if args.role in users.ROLES_NEEDING_TOTP:
                print(
                    "an owner/admin must confirm two-factor sign-in before anything else: at the "
                    f"first sign-in, or now with `gateway users confirm-2fa {email} --code NNNNNN`"
                )
            return 0
        if args.action == "passwd":
            password = read_password(args.password_stdin)
            with conn:
                users.set_password(conn, args.email, password)
            print(f"password of {args.email} changed; failed sign-ins and lockout cleared")
            return 0
        if args.action == "reset-2fa":
            with conn:
                new = users.reset_totp(conn, args.email)
            print_enrolment(new, args.email)
            return 0
        if args.action == "confirm-2fa":
            if not args.code:
                raise GatewayError("confirm-2fa needs --code with the authenticator's current code")
            user = users.get_user(conn, args.email)
            with conn:
                ok = users.confirm_totp(conn, user.id, args.code)
            if not ok:
                raise GatewayError(
                    "that code is not valid now (or was used already): check the device's clock "
                    "and try the next code"
                )
            print(f"two-factor sign-in confirmed for {user.email}")
            return 0
        with conn:
            users.deactivate(conn, args.email)
        print(f"{args.email} deactivated: they can no longer sign in")
        return 0

"""Admin users (gateway.users): Argon2id hashes, the password rule, TOTP codes accepted once,
recovery codes used once, and the last owner protected; on a real SQLCipher database."""

from __future__ import annotations

import json

import argon2
import pyotp
import pytest

from gateway.store.db import connect
from gateway.store.migrations import migrations
from gateway.users import (
    UserError,
    add_user,
    confirm_totp,
    deactivate,
    get_user,
    list_users,
    reset_totp,
    set_password,
    use_recovery_code,
    verify_password,
    verify_totp,
)

GOOD = "correct-horse-battery-staple"


@pytest.fixture
def conn(tmp_path):
    db = connect(tmp_path / "gateway.db", b"k" * 32)
    migrations.apply(db)
    yield db.conn
    db.conn.close()


def test_password_is_argon2id_with_at_least_the_asvs_cost(conn):
    new = add_user(conn, "Ann@Example.com", GOOD, "owner")
    stored = conn.execute(
        "SELECT password_hash FROM users WHERE id = ?", (new.user_id,)
    ).fetchone()[0]
    params = argon2.extract_parameters(stored)
    assert params.type is argon2.Type.ID
    assert params.memory_cost >= 19 * 1024 and params.time_cost >= 2
    assert GOOD not in stored
    assert verify_password(stored, GOOD) and not verify_password(stored, GOOD + "x")
    assert get_user(conn, "ann@EXAMPLE.com").email == "ann@example.com"


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short-pass", "too short"),
        ("x" * 129, "too long"),
        ("password1234", "too easy"),
        ("aaaaaaaaaaaaaaaa", "too easy"),
        ("ann@example.com", "too easy"),
    ],
)
def test_weak_passwords_are_refused_with_the_reason(conn, password, why):
    with pytest.raises(UserError, match=why):
        add_user(conn, "ann@example.com", password, "agent")
    assert list_users(conn) == []


def test_bad_email_role_and_duplicates_are_refused(conn):
    with pytest.raises(UserError, match="not an email"):
        add_user(conn, "ann", GOOD, "agent")
    with pytest.raises(UserError, match="unknown role"):
        add_user(conn, "ann@example.com", GOOD, "root")
    add_user(conn, "ann@example.com", GOOD, "agent")
    with pytest.raises(UserError, match="already exists"):
        add_user(conn, "ANN@example.com", GOOD, "admin")


def test_a_totp_code_is_accepted_once_and_only_near_its_time(conn):
    new = add_user(conn, "ann@example.com", GOOD, "owner")
    assert new.totp_uri.startswith("otpauth://totp/Sovereign%20Gateway:ann%40example.com?")
    totp = pyotp.TOTP(new.totp_secret)
    t = 1_800_000_000.0
    code = totp.at(t)
    assert not get_user(conn, "ann@example.com").totp_confirmed
    assert confirm_totp(conn, new.user_id, code, at=t)
    assert get_user(conn, "ann@example.com").totp_confirmed
    assert not verify_totp(conn, new.user_id, code, at=t), "a used code must not work again"
    assert not verify_totp(conn, new.user_id, totp.at(t - 30), at=t), "nor an older one"
    assert verify_totp(conn, new.user_id, totp.at(t + 30), at=t)  # one step of clock drift
    assert not verify_totp(conn, new.user_id, totp.at(t + 300), at=t)
    assert not verify_totp(conn, new.user_id, "12345x", at=t)


def test_recovery_codes_work_once_and_are_stored_hashed(conn):
    new = add_user(conn, "ann@example.com", GOOD, "admin")
    assert len(new.recovery_codes) == 10 and len(set(new.recovery_codes)) == 10
    stored = conn.execute("SELECT recovery_codes FROM users").fetchone()[0]
    assert not any(code in stored for code in new.recovery_codes)
    first = new.recovery_codes[0]
    assert use_recovery_code(conn, new.user_id, first.upper())
    assert not use_recovery_code(conn, new.user_id, first)
    assert len(json.loads(conn.execute("SELECT recovery_codes FROM users").fetchone()[0])) == 9


def test_reset_2fa_and_password_change(conn):
    new = add_user(conn, "ann@example.com", GOOD, "admin")
    confirm_totp(conn, new.user_id, pyotp.TOTP(new.totp_secret).now())
    again = reset_totp(conn, "ann@example.com")
    assert again.totp_secret != new.totp_secret
    assert not get_user(conn, "ann@example.com").totp_confirmed
    assert not use_recovery_code(conn, new.user_id, new.recovery_codes[1])
    set_password(conn, "ann@example.com", "another-long-passphrase")
    stored = conn.execute("SELECT password_hash FROM users").fetchone()[0]
    assert verify_password(stored, "another-long-passphrase")


def test_the_last_owner_cannot_be_deactivated(conn):
    add_user(conn, "ann@example.com", GOOD, "owner")
    with pytest.raises(UserError, match="last owner"):
        deactivate(conn, "ann@example.com")
    add_user(conn, "bob@example.com", GOOD, "owner")
    deactivate(conn, "ann@example.com")
    assert get_user(conn, "ann@example.com").deactivated

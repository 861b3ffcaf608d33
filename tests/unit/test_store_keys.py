"""Gateway keys (addons/store/keys.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from addons.store.db import connect
from addons.store.keys import (
    KEY_PREFIX,
    KeyInfo,
    create_key,
    hash_key,
    key_id_of,
    list_keys,
    load_keys,
    new_secret,
    revoke_key,
    touch_last_used,
)
from addons.store.writer import RecordWriter

T0 = datetime(2025, 5, 1, 9, 0, 0, 250000, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path):
    conn = connect(tmp_path / "keys.duckdb")
    yield conn
    conn.close()


def dump_all_tables(conn) -> str:
    tables = [r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
    out = []
    for t in tables:
        cols = [r[0] for r in conn.execute(f"DESCRIBE {t}").fetchall()]
        select = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in cols)
        out.append(repr(conn.execute(f"SELECT {select} FROM {t}").fetchall()))
    return "\n".join(out)


def test_secret_format():
    key_id, full = new_secret()
    assert re.fullmatch(r"aigw_[0-9a-f]{8}", key_id)
    assert full.startswith(key_id + "_")
    tail = full[len(key_id) + 1 :]
    assert len(tail) == 40 and re.fullmatch(r"[A-Za-z0-9_-]{40}", tail)  # 240 bits
    assert key_id_of(full) == key_id
    assert key_id_of(key_id) is None
    assert key_id_of(full + "x") is None
    assert key_id_of("sk-ant-" + tail) is None
    assert key_id_of(full.upper()) is None
    assert hash_key(full) == hash_key(full) and len(hash_key(full)) == 64
    assert new_secret()[1] != full
    assert KEY_PREFIX == "aigw_"


def test_create_list_load_revoke(db):
    info, full = create_key(db, "alice@example.com", now=T0)
    admin_info, admin_full = create_key(db, "root", admin=True, now=T0 + timedelta(minutes=1))
    second, second_full = create_key(db, "alice@example.com", now=T0 + timedelta(minutes=2))

    assert key_id_of(full) == info.id
    assert info.user_name == "alice@example.com" and not info.admin
    assert info.created_at == T0 and info.expires_at is None
    assert info.revoked_at is None and info.last_used_at is None
    assert admin_info.admin
    assert second.user_id == info.user_id  # same user row reused
    assert db.execute("SELECT count(*) FROM users").fetchone()[0] == 2

    listed = list_keys(db)
    assert [k.id for k in listed] == [second.id, admin_info.id, info.id]  # newest first
    assert listed[2] == info
    assert listed[1] == admin_info

    loaded = load_keys(db)
    assert set(loaded) == {hash_key(full), hash_key(admin_full), hash_key(second_full)}
    assert loaded[hash_key(full)] == info

    assert revoke_key(db, info.id, now=T0 + timedelta(hours=1))
    assert not revoke_key(db, info.id)  # already revoked
    assert not revoke_key(db, "aigw_00000000")  # unknown
    revoked = load_keys(db)[hash_key(full)]
    assert revoked.revoked_at == T0 + timedelta(hours=1)
    assert not revoked.usable(T0 + timedelta(hours=2))
    assert load_keys(db)[hash_key(second_full)].usable(T0 + timedelta(hours=2))


def test_only_the_hash_is_stored(db):
    info, full = create_key(db, "bob", now=T0)
    dump = dump_all_tables(db)
    secret_tail = full[len(info.id) + 1 :]
    assert full not in dump
    assert secret_tail not in dump
    assert secret_tail[:20] not in dump and secret_tail[-20:] not in dump
    assert hash_key(full) in dump
    assert info.id in dump  # the public prefix is fine to store


def test_expiry_and_usable(db):
    info, full = create_key(db, "carol", expires=timedelta(hours=1), now=T0)
    assert info.expires_at == T0 + timedelta(hours=1)
    assert load_keys(db)[hash_key(full)].expires_at == T0 + timedelta(hours=1)
    assert info.usable(T0 + timedelta(minutes=59))
    assert not info.usable(T0 + timedelta(hours=1))
    assert not info.usable(T0 + timedelta(days=1))
    forever, _ = create_key(db, "carol", expires=timedelta(0), now=T0)
    assert forever.expires_at is None and forever.usable(T0 + timedelta(days=3650))
    with pytest.raises(ValueError):
        create_key(db, "carol", expires=timedelta(seconds=-1), now=T0)
    k = KeyInfo("aigw_00000000", "u", "n", False, T0, None, T0, None)
    assert not k.usable(T0 - timedelta(days=1))


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "bob/../x", "émile", "semi;colon", "tab\t"])
def test_bad_user_names(db, name):
    with pytest.raises(ValueError, match="invalid user name"):
        create_key(db, name)
    assert db.execute("SELECT count(*) FROM users").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 0


def test_good_user_names(db):
    for name in ["a", "x" * 64, "first.last@example.com", "svc_ci-bot"]:
        info, _ = create_key(db, name, now=T0)
        assert info.user_name == name


def test_touch_last_used_bulk_never_moves_back(db):
    a, _ = create_key(db, "dave", now=T0)
    b, _ = create_key(db, "erin", now=T0)
    c, _ = create_key(db, "fred", now=T0)
    touch_last_used(db, {a.id: T0 + timedelta(minutes=5), b.id: T0 + timedelta(minutes=7)})
    touch_last_used(db, {a.id: T0 + timedelta(minutes=1), "aigw_ffffffff": T0})
    touch_last_used(db, {})
    by_id = {k.id: k for k in list_keys(db)}
    assert by_id[a.id].last_used_at == T0 + timedelta(minutes=5)
    assert by_id[b.id].last_used_at == T0 + timedelta(minutes=7)
    assert by_id[c.id].last_used_at is None


def test_keys_through_the_writer_thread(db):
    w = RecordWriter(db, flush_interval=0.05)
    w.start()
    info, full = w.call(lambda cur: create_key(cur, "gina", admin=True, now=T0))
    assert w.call(lambda cur: revoke_key(cur, info.id, now=T0 + timedelta(seconds=1)))
    w.close()
    loaded = load_keys(db)[hash_key(full)]
    assert loaded.admin and loaded.revoked_at == T0 + timedelta(seconds=1)

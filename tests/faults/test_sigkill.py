"""SIGKILL mid-stream, then a restart: the request and its prompt were already recorded when it was
accepted, and the restart ends the interception as failed — also when the database was failing and
the records were in the spool."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from addons.store.recovery import RECOVERED_ERROR
from tests.e2e.test_operations import StreamClient, held_stream, wait_until
from tests.fakes.upstream import FakeUpstream
from tests.faults.test_recorder_spool import counts, fail_the_wal, recorded, send, spool_files, spooled
from tests.gateway_process import Gateway, clean_env, provider_env

pytestmark = pytest.mark.e2e

OPEN_ROW = ("select i.id, i.status, i.ended_at, i.metadata->>'error' as error, p.prompt from aibridge_interceptions i "
            "left join aibridge_user_prompts p on p.interception_id = i.id where i.metadata->>'stream' = 'true'")


def gateway(upstream: FakeUpstream, tmp_path: Path) -> Gateway:
    gw = Gateway(tmp_path, clean_env(**provider_env(upstream.url)))
    gw.user_key = gw.create_key("alice")  # type: ignore[attr-defined]
    return gw.start()


def test_sigkill_mid_stream_keeps_the_prompt_and_ends_the_row_failed(upstream: FakeUpstream,
                                                                       tmp_path: Path) -> None:
    gw = gateway(upstream, tmp_path)
    gate = held_stream(upstream)
    client = StreamClient(gw, gw.user_key)  # type: ignore[attr-defined]
    try:
        assert client.first.wait(10)
        # Recorded while the response is still streaming: the start and the prompt.
        row = wait_until(lambda: gw.query(OPEN_ROW), what="the open interception and its prompt")[0]
        assert (row["status"], row["ended_at"], row["prompt"]) == (None, None, "hi there")
        gw.stop(signal.SIGKILL)
    finally:
        gate.open()
        client.join()
    gw.start()
    try:
        rows = gw.query(OPEN_ROW)
        assert [(r["id"], r["status"], r["error"], r["prompt"]) for r in rows] == [
            (row["id"], "failed", RECOVERED_ERROR, "hi there")]
        assert rows[0]["ended_at"]
        assert "ended 1 interception(s) left open by an earlier crash" in gw.output()
    finally:
        assert gw.stop() == 0


def test_sigkill_while_spooling_then_restart_replays_and_recovers(upstream: FakeUpstream,
                                                                  tmp_path: Path) -> None:
    gw = gateway(upstream, tmp_path)
    sent = fail_the_wal(gw)
    gate = held_stream(upstream)
    client = StreamClient(gw, gw.user_key)  # type: ignore[attr-defined]
    try:
        assert client.first.wait(10)
        send(gw, 3)  # completed while the stream is held; their records land in the spool
        sent += 3
        # 4 records per completed request, and the stream's start and prompt: all on disk before the kill.
        wait_until(lambda: spooled(gw) + recorded(gw) == 4 * sent + 2, what="every record on disk")
        assert spooled(gw) >= 3 * 4 + 2
        gw.stop(signal.SIGKILL)  # the file-size limit dies with the process
    finally:
        gate.open()
        client.join()
    gw.start()
    try:
        wait_until(lambda: not spool_files(gw), what="the replay")
        rows = gw.wait_for(OPEN_ROW, lambda r: bool(r) and r[0]["status"] is not None)
        assert [(r["status"], r["error"], r["prompt"]) for r in rows] == [("failed", RECOVERED_ERROR, "hi there")]
        assert counts(gw) == {"interceptions": sent + 1, "completed": sent, "prompts": sent, "tokens": sent}
    finally:
        assert gw.stop() == 0

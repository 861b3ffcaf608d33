"""DuckDB invalidated by a fatal write error: the recorder spools, reopens the database and replays.

A checkpoint that cannot grow the database file (RLIMIT_FSIZE, as `ulimit -f` sets it) is a fatal
error in DuckDB: the database instance refuses every later statement until it is opened again. The
recorder runs in a subprocess, because the limit and the ignored SIGXFSZ apply to the whole process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.gateway_process import REPO

SCRIPT = textwrap.dedent("""
    import json, logging, resource, sys, time, uuid
    from datetime import UTC, datetime
    from pathlib import Path

    from addons.settings.config import Settings
    from addons.sinks.recorder import Recorder
    from addons.flow.records import InterceptionEnd, InterceptionStart, PromptRecord

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    db = Path(sys.argv[1])
    recorder = Recorder(Settings(db=db))
    recorder.open()  # ignores SIGXFSZ: the limit below is an error, not a kill
    writer = recorder.writer
    first_conn = recorder.conn

    def interception(prompt):
        iid, now = str(uuid.uuid4()), datetime.now(UTC)
        recorder.record(InterceptionStart(iid, "0b6f5a1e-8d0c-4f7e-9a51-3f1e2c4d5e6f", None, "anthropic",
                                          "anthropic", "m", "curl", None, "centralized", None, now))
        recorder.record(PromptRecord(iid, None, prompt, now))
        recorder.record(InterceptionEnd(iid, now, "completed", {"response_id": "msg_" + iid[:8]}))

    def wait(check, what):
        deadline = time.monotonic() + 30
        while not check():
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting for " + what)
            time.sleep(0.02)

    for i in range(3000):
        interception("before")
    assert writer.flush(30)
    writer.call(lambda cur: cur.execute("CHECKPOINT"))  # into the database file; the WAL starts over
    for i in range(300):
        interception("before")
    assert writer.flush(30)
    wal = db.with_name(db.name + ".wal")
    # Nothing may grow past the WAL's size: the checkpoint (into the larger database file) fails,
    # and so do commits after the reopen; a spool batch is smaller.
    limit = wal.stat().st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        writer.call(lambda cur: cur.execute("CHECKPOINT"))
        raise SystemExit("the checkpoint did not fail")
    except Exception as exc:
        checkpoint_error = f"{type(exc).__name__}: {exc}"
    for i in range(25):
        interception("during")
    assert writer.flush(30)
    wait(lambda: writer.outage.spooled == 75, "the spool")
    failing = recorder.failing()
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    wait(lambda: writer.outage.spooled == 0 and writer.outage.reason is None, "the replay")
    rows = recorder.conn.execute(
        "SELECT prompt, count(*), count(provider_response_id) FROM aibridge_user_prompts GROUP BY ALL ORDER BY 1"
    ).fetchall()
    ended = recorder.conn.execute("SELECT count(*) FROM aibridge_interceptions WHERE status = 'completed'").fetchone()
    print(json.dumps({"checkpoint_error": checkpoint_error, "failing": failing, "rows": rows, "ended": ended[0],
                      "reopened": recorder.conn is not first_conn, "dropped": writer.outage.dropped}))
    recorder.done()
""")


def test_invalidated_database_is_reopened_and_the_spool_replayed(tmp_path: Path) -> None:
    db = tmp_path / "data" / "aibridge.duckdb"
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(db)], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert "FatalException" in out["checkpoint_error"]
    assert out["failing"] == "recording to the database is failing; records are spooled (75 so far)"
    assert out["reopened"] is True and out["dropped"] == 0
    assert out["rows"] == [["before", 3300, 3300], ["during", 25, 25]]
    assert out["ended"] == 3325
    assert "reopened the database" in result.stderr and "spool replayed" in result.stderr
    assert not list(db.with_name(db.name + ".spool").glob("*.batch"))

"""`anomon console` as a user runs it: it prints its URL, serves, stops on Ctrl-C; errors are one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from monitor.broker import free_port


def _anomon(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "ANOMON_CONSOLE_TOKEN"}
    return subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,  # type: ignore[call-overload]
    )


def test_the_console_command_serves_until_interrupted(kafka_bootstrap: str, tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "console.db"
    console = _anomon("console", "--bootstrap", kafka_bootstrap, "--port", str(port), "--db", str(db))
    try:
        assert console.stdout is not None
        first = console.stdout.readline()
        assert first.startswith(f"anomon console on http://127.0.0.1:{port} ") and str(db) in first, first
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200
        console.send_signal(signal.SIGINT)
        _, err = console.communicate(timeout=30)
    finally:
        console.kill()
    assert console.returncode == 130 and "Traceback" not in err
    assert db.is_file()


def test_a_console_database_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = _anomon("console", "--port", "0", "--db", str(blocker / "console.db"))
    _, err = done.communicate(timeout=60)
    assert done.returncode == 2 and len(err.strip().splitlines()) == 1
    assert "cannot open the console database" in err and "--db" in err

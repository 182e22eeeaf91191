"""``clusterctl agent serve`` / ``mount``: bad input is one line and exit 2; serve runs
standalone, prints where it listens, serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.ninep import proto
from agent.ninep.client import Client
from builder.cli import main
from core.events import parse_line
from testdriver.ninep_servers import run

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, message", [
    (["agent", "serve", "--export", "nopath", "--insecure-no-auth"], "expected NAME=PATH"),
    (["agent", "serve", "--export", "x=/no/such/dir", "--insecure-no-auth"], "is not a directory"),
    (["agent", "serve", "--export", "fs=/tmp", "--insecure-no-auth"], "not 'fs'"),
    (["agent", "serve", "--export", "a=/tmp", "--export", "a=/tmp", "--insecure-no-auth"], "twice"),
    (["agent", "serve", "--export", "a=/tmp"], "--insecure-no-auth"),
    (["agent", "serve", "--export", "a=/tmp", "--insecure-no-auth", "--listen", "0.0.0.0:5640"], "loopback"),
    (["agent", "serve", "--export", "a=/tmp", "--insecure-no-auth", "--listen", "nohost"], "HOST:PORT"),
    (["agent", "serve", "--insecure-no-auth", "--msize", "100"], "--msize"),
    (["agent", "serve", "--insecure-no-auth", "--ctl-allow", "reboot"], "--ctl-allow"),
    (["agent", "mount", "127.0.0.1:5640", "/no/such/mountpoint"], "not a directory"),
    (["agent", "mount", "nowhere", "/tmp"], "HOST:PORT"),
])
def test_bad_input_exits_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_serve_standalone(tmp_path: Path) -> None:
    (tmp_path / "hello").write_bytes(b"standalone")
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder.cli", "agent", "serve", "--export", f"data={tmp_path}:ro",
         "--listen", "127.0.0.1:0", "--insecure-no-auth", "--hostname", "testhost"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ev = parse_line(proc.stdout.readline())
        assert ev is not None and ev["event"] == "agent-listening" and ev["host"] == "testhost"
        assert ev["exports"] == [{"name": "data", "readonly": True}]
        address = ev["addresses"][0]

        async def use() -> None:
            c = await Client.connect(address)
            await c.attach(1, "")
            await c.walk(1, 2, ["fs", "data", "hello"])
            await c.lopen(2, proto.L_O_RDONLY)
            assert await c.read(2, 0, 100) == b"standalone"
            assert await asyncio.gather(c.walk(1, 3, ["status"]), c.walk(1, 4, ["fs", "data"]))
            await c.lopen(3, proto.L_O_RDONLY)
            status = json.loads(await c.read_all(3))
            assert status["host"] == "testhost" and status["connections"] == 1
            with pytest.raises(OSError):
                await c.mkdir(4, "nope", 0o755)  # read-only export
            await c.close()

        run(use())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

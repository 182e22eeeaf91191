"""A virtual LAN among guests only: one vde_switch on a unix socket (Debian's vde2).

Every guest NIC on the LAN plugs into a port of the switch with QEMU's ``-netdev vde``;
nothing on it has a route to the outside (no user-mode network, no tap). A test pulls one
guest's cable with QMP ``set_link`` (:meth:`testdriver.qemu.Machine.set_link`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

VDE_SWITCH = "vde_switch"


class LanError(RuntimeError):
    pass


class Lan:
    def __init__(self, name: str = "lan", ports: int = 32) -> None:
        self.name = name
        self.ports = ports
        # The switch's control directory holds unix sockets: keep its path short.
        self.dir = Path(tempfile.mkdtemp(prefix=f"clusterctl-{name}-"))
        self.sock = self.dir / "switch"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Lan:
        if shutil.which(VDE_SWITCH) is None:
            raise LanError("vde_switch not found: install Debian's 'vde2' package")
        # Not daemonised, so this process owns it; its management console reads stdin, which
        # stays an open pipe (EOF there would end the switch).
        self.proc = subprocess.Popen(
            [VDE_SWITCH, "--sock", str(self.sock), "--numports", str(self.ports)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "switch.log").open("wb"),
        )
        deadline = time.monotonic() + timeout
        while not (self.sock / "ctl").exists():
            if self.proc.poll() is not None:
                raise LanError(f"vde_switch exited: {(self.dir / 'switch.log').read_text(errors='replace')}")
            if time.monotonic() > deadline:
                self.stop()
                raise LanError(f"vde_switch did not create {self.sock}/ctl within {timeout:.0f} s")
            time.sleep(0.05)
        return self

    def netdev(self) -> str:
        """The ``-netdev`` backend (without id) that plugs a NIC into this LAN."""
        if self.proc is None:
            raise LanError(f"LAN {self.name} is not started")
        return f"vde,sock={self.sock}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Lan:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

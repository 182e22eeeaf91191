"""pytest fixtures on the QEMU machine driver (a plugin module: list it in ``pytest_plugins``).

    def test_boot(boot_machine, testkit):
        m = boot_machine("nano-itx", kernel=testkit.kernel, initrd=testkit.initrd, append=testkit.append())
        m.wait_for("ready", timeout=120)

    def test_stick(boot_machine, lan):
        net = lan()
        m = boot_machine("nano-itx", "images/dualnano/stick.img", lan=net, name="left")

Every machine started through ``boot_machine`` is stopped at teardown (QMP quit, else SIGKILL);
every LAN made through ``lan`` is stopped after its machines. Work dirs live under tmp_path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testdriver.board import Board, load_board
from testdriver.lan import Lan
from testdriver.qemu import Machine
from testdriver.testkit import TestKit, ensure_testkit

BootMachine = Callable[..., Machine]


@pytest.fixture(scope="session")
def testkit() -> TestKit:
    """Debian's kernel and a busybox initramfs that report the emulated hardware (cached)."""
    cache = os.environ.get("CLUSTERCTL_TESTKIT_CACHE")
    return ensure_testkit(Path(cache) if cache else None)


@pytest.fixture
def lan() -> Iterator[Callable[[], Lan]]:
    """A factory of guest-only LANs (vde_switch), stopped at teardown."""
    made: list[Lan] = []

    def make(name: str = "lan") -> Lan:
        net = Lan(name).start()
        made.append(net)
        return net

    yield make
    for net in made:
        net.stop()


@pytest.fixture
def boot_machine(tmp_path: Path, lan: Callable[[], Lan]) -> Iterator[BootMachine]:
    """A factory: ``boot_machine(board, image=None, **Machine options)`` returns a started machine."""
    machines: list[Machine] = []

    def boot(board: Board | str, image: str | os.PathLike[str] | None = None, **options: Any) -> Machine:
        b = board if isinstance(board, Board) else load_board(board)
        name = options.pop("name", None) or f"{b.name}-{len(machines)}"
        m = Machine(b, tmp_path / "machines" / name, boot_image=image, name=name, **options)
        machines.append(m)
        return m.start()

    yield boot
    # Machines before LANs: the ``lan`` fixture's teardown runs after this one.
    for m in machines:
        m.close()

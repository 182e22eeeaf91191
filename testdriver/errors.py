"""What a machine's driver raises when a machine does not do what a test waited for (the text
explains with the console and events). testdriver.qemu exports them; they live here so that
testdriver.shell can raise and catch them without importing the machine."""

from __future__ import annotations


class MachineError(RuntimeError):
    """A machine did not do what a test waited for; the text explains with console and events."""


class MachineTimeout(MachineError):
    pass


class MachineExited(MachineError):
    """QEMU ended (guest power-off, crash, or a kill) before what was awaited happened."""

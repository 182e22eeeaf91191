"""Boot timings under QEMU TCG, through the machine driver.

    python bench/boot_bench.py                       # the test kit: firmware × boot medium
    python bench/boot_bench.py --image images/dualnano/stick.img --board nano-itx \\
        --baseline plain-debian.img [--baseline-board nano-itx] [--internal]

Without ``--image``: the busybox test kit on a UEFI board (nano-itx) and a BIOS board
(nano-itx-storage), booted by direct kernel load, from a USB stick and from an internal disk;
seconds to the kit's first event (firmware + loader + kernel) and to ``ready``, and the ratios
that show what firmware and medium cost. With ``--image``: seconds from power-on to ``ready``
for a built image against a plain Debian image's ``login:`` prompt, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hardware.board import load_board  # noqa: E402
from hardware.qemu import Machine  # noqa: E402
from hardware.testkit import TestKit, build_stick, ensure_testkit  # noqa: E402

BOARDS = {"uefi": "nano-itx", "bios": "nano-itx-storage"}


def kit_boot(kit: TestKit, stick: Path, board: str, medium: str, workdir: Path) -> tuple[float, float]:
    """(seconds to the first event, seconds to ready) for one boot of the kit."""
    options: dict[str, object] = {}
    if medium == "direct":
        options = {"kernel": kit.kernel, "initrd": kit.initrd, "append": kit.append()}
    else:
        options = {"boot_image": stick, "as_usb": medium == "usb"}
    with Machine(load_board(board), workdir, **options) as m:  # type: ignore[arg-type]
        began = time.monotonic()
        m.start()
        m.wait_for("started", timeout=300)
        first = time.monotonic() - began
        m.wait_for("ready", timeout=120)
        return first, time.monotonic() - began


def bench_kit(runs: int) -> None:
    kit = ensure_testkit()
    with tempfile.TemporaryDirectory(prefix="clusterctl-bench-") as tmp:
        stick = build_stick(kit, Path(tmp) / "stick.img", kit.append())
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        print(f"{'firmware':8} {'medium':8} {'to kernel up':>13} {'to ready':>9}   (median of {runs})")
        for firmware, board in BOARDS.items():
            for medium in ("direct", "usb", "internal"):
                samples = []
                for i in range(runs):
                    samples.append(kit_boot(kit, stick, board, medium, Path(tmp) / f"{board}-{medium}-{i}"))
                results[firmware, medium] = samples
                first = statistics.median(s[0] for s in samples)
                ready = statistics.median(s[1] for s in samples)
                print(f"{firmware:8} {medium:8} {first:12.1f}s {ready:8.1f}s", flush=True)

    def med(firmware: str, medium: str) -> float:
        return statistics.median(s[1] for s in results[firmware, medium])

    for medium in ("direct", "usb", "internal"):
        print(f"UEFI / BIOS, {medium}: {med('uefi', medium) / med('bios', medium):.2f}×")
    for firmware in BOARDS:
        print(f"{firmware}: USB stick / direct kernel {med(firmware, 'usb') / med(firmware, 'direct'):.2f}×, "
              f"internal disk / direct kernel {med(firmware, 'internal') / med(firmware, 'direct'):.2f}×")


def timed(board: str, image: Path, internal: bool, until_event: str | None, until_line: str | None) -> float:
    with tempfile.TemporaryDirectory(prefix="clusterctl-bench-") as tmp, \
            Machine(load_board(board), tmp, boot_image=image, as_usb=not internal) as m:  # fmt: skip
        began = time.monotonic()
        m.start()
        if until_event:
            m.wait_for(until_event, timeout=1800)
        else:
            assert until_line is not None
            m.wait_for_line(until_line, timeout=1800)
        return time.monotonic() - began


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1, help="boots per case (the median is shown)")
    p.add_argument("--image", type=Path, help="a built clusterctl image: time power-on to 'ready'")
    p.add_argument("--board", default="nano-itx")
    p.add_argument("--internal", action="store_true", help="images as internal disks, not USB sticks")
    p.add_argument("--baseline", type=Path, help="a plain Debian image: time power-on to 'login:'")
    p.add_argument("--baseline-board", help="board for the baseline (default: --board)")
    args = p.parse_args()
    if args.image is None:
        bench_kit(args.runs)
        return 0
    ready = statistics.median(timed(args.board, args.image, args.internal, "ready", None) for _ in range(args.runs))
    print(f"{args.image.name} on {args.board}: power-on to ready {ready:.1f} s")
    if args.baseline:
        board = args.baseline_board or args.board
        login = statistics.median(
            timed(board, args.baseline, args.internal, None, r"login: ?$") for _ in range(args.runs)
        )
        print(f"{args.baseline.name} on {board}: power-on to login: {login:.1f} s")
        print(f"ratio ready / plain Debian login: {ready / login:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared test setup. Plugins of other test areas are listed in pytest_plugins."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.diskroom import ROOM_FOR_SLOW, prune_big_files  # noqa: E402

pytest_plugins: list[str] = ["tests.qemu_fixtures"]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Slow tests on a disk without room for them would fail by the hundred with ENOSPC; one
    clear line instead."""
    config = session.config
    if config.option.collectonly or not any(item.get_closest_marker("slow") for item in session.items):
        return
    where = Path(config.option.basetemp or tempfile.gettempdir())
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < ROOM_FOR_SLOW:
        pytest.exit(f"the slow tests need {ROOM_FOR_SLOW / 1024**3:.0f} GiB free under {where}, and it has "
                    f"{free / 1024**3:.1f} GiB: free some space, or run the fast ones alone with -m 'not slow'",
                    returncode=2)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """After its fixtures are down, a failed test's directory (a passed one's is already gone)
    keeps its logs but not its disks and images."""
    try:
        return (yield)
    finally:
        path = getattr(item, "funcargs", {}).get("tmp_path")
        if isinstance(path, Path) and path.is_dir():
            prune_big_files(path)

"""Who may act on a host through its ctl file (agent/control.py): the asking host's role must
list this host's role in roles.<role>.control, and the person must be root or in the sudo
group. Real handshakes (cluster CA, host certificates) and real 9P over loopback; a refused
request is EPERM and a ``refused`` event naming who asked, an allowed one a ``ctl`` event.
The reboot itself happens in the mesh lab (tests/test_mesh_qemu.py); here it is recorded."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import identity as idm
from agent.control import Policy, Requester
from agent.ninep import proto
from agent.ninep.client import Client, NinePError
from agent.peer import open_client
from core.events import parse_line
from tests.test_auth import GatedServer

ALICE, ADMIN = 2000, 2002
HOSTS = {"wall-1": "screen", "wall-2": "screen", "vault": "storage"}
CONTROLS = {"screen": ["screen", "storage"], "storage": []}
USERS = [("alice", ALICE, ["audio"]), ("admin", ADMIN, ["sudo"])]


class Served:
    def __init__(self, base: Path) -> None:
        ca, _ = idm.init_ca(base / "ca", "vesawall")
        for host in HOSTS:
            idm.write_host_identity(idm.issue_host(ca, host), base / host)
        self.base = base
        self.powered: list[str] = []
        policy = Policy.from_profile("screen", HOSTS, CONTROLS, USERS)
        self.server = GatedServer(idm.load_host_identity(base / "wall-2"), None, exports=[], policy=policy,
                                  power=self.powered.append)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for _, line in self.server.ns.bus.since(0) if (e := parse_line(line.decode())) and e["event"] == name]


@pytest.fixture(scope="module")
def wall2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("control"))
    try:
        yield served
    finally:
        served.server.close()


async def ctl(served: Served, host: str, uid: int, command: str) -> int:
    """Write ``command`` to wall-2's ctl as ``uid`` on ``host``; 0 or the errno."""
    client, _peer = await open_client(served.server.address, served.base / host)
    try:
        await client.attach(0, "", "", uid)
        await client.walk(0, 1, ["ctl"])
        await client.lopen(1, proto.L_O_WRONLY)
        await client.write(1, 0, command.encode() + b"\n")
        return 0
    except NinePError as e:
        return e.errno
    finally:
        await client.close()


def test_a_controlling_roles_root_and_operators_act_and_are_named(wall2: Served) -> None:
    assert asyncio.run(ctl(wall2, "wall-1", 0, "reboot")) == 0
    assert asyncio.run(ctl(wall2, "wall-1", ADMIN, "poweroff")) == 0
    assert wall2.powered == ["reboot", "poweroff"]
    assert [(e["command"], e["by"]) for e in wall2.events("ctl")] == [("reboot", "wall-1/root"),
                                                                     ("poweroff", "wall-1/admin")]


def test_a_role_that_may_not_control_and_a_plain_person_are_refused(wall2: Served) -> None:
    before = list(wall2.powered)
    assert asyncio.run(ctl(wall2, "vault", 0, "reboot")) == errno.EPERM
    assert asyncio.run(ctl(wall2, "wall-1", ALICE, "reboot")) == errno.EPERM
    assert asyncio.run(ctl(wall2, "wall-1", ALICE, "svc restart ssh.service")) == errno.EPERM
    assert wall2.powered == before
    refused = [(e["command"], e["by"], e["reason"]) for e in wall2.events("refused")]
    assert refused[0][:2] == ("reboot", "vault/root") and "role storage may not control role screen" in refused[0][2]
    assert refused[1][:2] == ("reboot", "wall-1/alice") and "neither root nor in the sudo group" in refused[1][2]
    assert refused[2][:2] == ("svc restart ssh.service", "wall-1/alice")
    assert asyncio.run(ctl(wall2, "wall-1", 0, "reboot now")) == errno.EINVAL  # usage, before any action


def test_without_a_handshake_nothing_is_allowed(tmp_path: Path) -> None:
    """An ungated connection to a policy-run agent: its requests are no host's; only --ctl-allow would open them."""
    powered: list[str] = []
    server = GatedServer(None, None, exports=[], policy=Policy.from_profile("screen", HOSTS, CONTROLS, USERS),
                         power=powered.append)

    async def go() -> int:
        client = await Client.connect(server.address)
        try:
            await client.attach(0, "", "", 0)
            await client.walk(0, 1, ["ctl"])
            await client.lopen(1, proto.L_O_WRONLY)
            await client.write(1, 0, b"reboot\n")
            return 0
        except NinePError as e:
            return e.errno
        finally:
            await client.close()

    try:
        assert asyncio.run(go()) == errno.EPERM and powered == []
    finally:
        server.close()


def test_requester_names() -> None:
    people = {ALICE: "alice"}
    assert Requester("wall-1", 0).who(people) == "wall-1/root"
    assert Requester("wall-1", ALICE).who(people) == "wall-1/alice"
    assert Requester(None, 4242).who(people) == "local/uid 4242"
    policy = Policy.from_profile("screen", HOSTS, CONTROLS, USERS)
    assert "no host of this cluster" in (policy.refusal(Requester("wall-9", 0)) or "")

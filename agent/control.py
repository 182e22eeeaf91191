"""Who may act on this host through its ctl files, and who is asking.

A ctl write arrives over a 9P connection. The handshake (agent.auth) says which cluster host
is at the other end; the fid says which person on that host (its uid, per-user attach). The
profile says what the asking host's role may control (``roles.<role>.control``): a request
is allowed when the asker's role lists this host's role and the person is root or in the sudo
group (the cluster's users with that group). Everyone else may read every file and act on
nothing: EPERM, and a ``refused`` event naming who asked.

A connection no handshake admitted (``clusterctl agent serve`` by hand, loopback only) keeps
the old rule: the capabilities ``--ctl-allow`` lists, for anyone.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

OPERATOR_GROUP = "sudo"


@dataclass(frozen=True)
class Requester:
    host: str | None  # the cluster host the handshake admitted; None: an ungated connection
    uid: int  # the attaching person's uid on that host (-1: unknown)

    def who(self, people: Mapping[int, str]) -> str:
        """host/person as events name them: wall-1/root, wall-1/alice, local/uid 1000."""
        person = "root" if self.uid == 0 else people.get(self.uid) or f"uid {self.uid}"
        return f"{self.host or 'local'}/{person}"


# Set by the 9P server around each Twrite (agent.ninep.server), read by the ctl commands.
current: contextvars.ContextVar[Requester | None] = contextvars.ContextVar("clusterctl_requester", default=None)


@dataclass(frozen=True)
class Policy:
    """What the hosts of each role may do here (this host's role, from the profile)."""

    role: str | None  # this host's
    role_of: Mapping[str, str]  # host -> its role, for every host of the cluster
    controls: Mapping[str, frozenset[str]]  # role -> roles its hosts may control
    operators: frozenset[int] = field(default_factory=frozenset)  # uids of the sudo group's people
    people: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def from_profile(cls, role: str | None, hosts: Mapping[str, str], controls: Mapping[str, Iterable[str]],
                     users: Iterable[tuple[str, int | None, Iterable[str]]]) -> Policy:
        people = {uid: name for name, uid, _groups in users if uid is not None}
        operators = frozenset(uid for _name, uid, groups in users if uid is not None and OPERATOR_GROUP in groups)
        return cls(role, dict(hosts), {r: frozenset(c) for r, c in controls.items()}, operators, people)

    def refusal(self, req: Requester) -> str | None:
        """Why ``req`` may not act on this host, or None when it may."""
        asker_role = self.role_of.get(req.host or "")
        if asker_role is None:
            return f"{req.host} is no host of this cluster's profile"
        allowed = self.controls.get(asker_role, frozenset())
        if self.role is None or self.role not in allowed:
            return (f"role {asker_role} may not control role {self.role} "
                    f"(roles.{asker_role}.control lists {', '.join(sorted(allowed)) or 'none'})")
        if req.uid != 0 and req.uid not in self.operators:
            return f"{req.who(self.people)} is neither root nor in the {OPERATOR_GROUP} group"
        return None

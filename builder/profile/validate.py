"""Checks that need the whole profile: references, addresses, images, distinguishability.

The field table (fields.py) checks each value on its own; what is here relates values to one
another. Every finding is located and collected, never raised one at a time.
"""

from __future__ import annotations

import ipaddress
import itertools
from typing import Any

from builder.profile.errors import Diagnostics, Mark, did_you_mean
from builder.profile.types import INVALID, CheckContext

FIRST_HOST_OFFSET = 10  # hosts get .11, .12, ... of the LAN unless an address is given


def _section(data: dict[str, Any], *path: str) -> dict[str, Any]:
    """A section of the checked profile, or {} where it is missing or was invalid (already reported)."""
    node: Any = data
    for step in path:
        node = node.get(step) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def check_references(ctx: CheckContext, data: dict[str, Any], boards: set[str]) -> None:
    known = {
        "roles": set(_section(data, "roles")),
        "oses": set(_section(data, "oses")),
        "hosts": set(_section(data, "hosts")),
        "boards": boards,
    }
    singular = {"roles": "role", "oses": "OS", "hosts": "host", "boards": "board"}
    for ref in ctx.refs:
        names = known[ref.section]
        if ref.name not in names:
            where = " in testdriver/boards/ or the profile's boards" if ref.section == "boards" else ""
            ctx.error(ref.mark, ref.path,
                      f'no {singular[ref.section]} "{ref.name}"{where}{did_you_mean(ref.name, names)}')


def cloud_hosts(data: dict[str, Any]) -> set[str]:
    """Hosts of cloud images: they take their provider's network, never a LAN address."""
    return {img["host"] for img in _section(data, "images").values()
            if isinstance(img, dict) and img.get("type") == "cloud" and isinstance(img.get("host"), str)}


def check_network(ctx: CheckContext, raw: Any, data: dict[str, Any], fallback: Mark) -> None:
    """A gateway belongs to a fixed-address LAN and lies on it (not its network or broadcast address)."""
    net = _section(data, "cluster", "network")
    lan, gateway = net.get("lan", "dhcp"), net.get("gateway")
    if gateway is None or gateway is INVALID or lan is INVALID:
        return
    mark = _raw_mark(raw, ("cluster", "network", "gateway"), fallback)
    where = "cluster.network.gateway"
    if lan == "dhcp":
        ctx.error(mark, where, f"{gateway} is given, but cluster.network.lan is dhcp, whose server gives the "
                  "gateway: give lan a subnet (such as 10.42.0.0/24) or leave gateway out")
        return
    subnet = ipaddress.ip_network(lan)
    addr = ipaddress.ip_address(gateway)
    usable = list(itertools.islice(subnet.hosts(), 1))
    example = f"such as {usable[0]}" if usable else ""
    if addr not in subnet:
        ctx.error(mark, where, f"{gateway} is outside cluster.network.lan {lan}: the gateway must be an "
                  f"address on the LAN, {example}")
    elif subnet.num_addresses > 2 and addr in (subnet.network_address, subnet.broadcast_address):
        what = "network" if addr == subnet.network_address else "broadcast"
        ctx.error(mark, where, f"{gateway} is the {what} address of cluster.network.lan {lan}: the gateway "
                  f"must be a host address on it, {example}")


def assign_addresses(ctx: CheckContext, raw: Any, data: dict[str, Any], marks: dict[str, Mark]) -> None:
    """Give each host without an address the next free one of the LAN, in profile order; a
    cloud image's host, and every host of a dhcp LAN, takes DHCP's (``dhcp``)."""
    net = _section(data, "cluster", "network")
    lan = net.get("lan", "dhcp")
    hosts = _section(data, "hosts")
    if lan is INVALID:
        return

    def at(name: str) -> Mark:
        return _raw_mark(raw, ("hosts", name, "address"), marks[name])

    for name in cloud_hosts(data):
        host = hosts.get(name)
        if not isinstance(host, dict):
            continue
        if host.get("address") not in (None, "dhcp", INVALID):
            ctx.error(at(name), f"hosts.{name}.address", f"{host['address']} is a LAN address, but {name} "
                      "is the host of a cloud image and takes its provider's DHCP (it joins through "
                      "cluster.fusion.seeds): write address: dhcp or leave address out")
        host["address"] = "dhcp"
    fixed = {name: host["address"] for name, host in hosts.items()
             if isinstance(host, dict) and host.get("address") not in (None, "dhcp", INVALID)}
    if lan == "dhcp":
        return
    net_ = ipaddress.ip_network(lan)
    gateway = net.get("gateway")
    taken: dict[str, str] = {gateway: "the gateway"} if isinstance(gateway, str) else {}
    for name, addr in fixed.items():
        if ipaddress.ip_address(addr) not in net_:
            ctx.error(at(name), f"hosts.{name}.address", f"{addr} is outside cluster.network.lan {lan}")
        elif addr in taken:
            ctx.error(at(name), f"hosts.{name}.address", f"{addr} is already the address of {taken[addr]}")
        taken[addr] = name
    free = (str(a) for i, a in enumerate(net_.hosts()) if i >= FIRST_HOST_OFFSET and str(a) not in taken)
    for name, host in hosts.items():
        if isinstance(host, dict) and host.get("address") is None:
            nxt = next(free, None)
            if nxt is None:
                ctx.error(marks[name], f"hosts.{name}", f"cluster.network.lan {lan} has no free address left")
                return
            host["address"] = nxt


def check_images(ctx: CheckContext, data: dict[str, Any], marks: dict[str, Mark], distinguish: bool) -> None:
    images = _section(data, "images")
    hosts = _section(data, "hosts")
    for name, image in images.items():
        if not isinstance(image, dict) or image is INVALID:
            continue
        kind = image.get("type")
        if kind == "usb-installer" and "hosts" not in image:
            ctx.error(marks[name], f"images.{name}", 'missing "hosts": the hosts this stick installs')
        if kind in ("disk", "cloud") and "host" not in image:
            ctx.error(marks[name], f"images.{name}", f'missing "host": the host of this {kind} image')
        if distinguish and kind == "usb-installer" and isinstance(image.get("hosts"), list):
            members = [h for h in image["hosts"] if isinstance(h, str) and isinstance(hosts.get(h), dict)]
            check_distinguishable(ctx, data, members, marks[name], f"images.{name}.hosts")


def check_image_isos(ctx: CheckContext, raw: Any, data: dict[str, Any], marks: dict[str, Mark]) -> None:
    """A stick's ISO files become menu entries named after them: no two alike, none an OS's name."""
    from builder.profile.yamlsource import mark_of_key
    from builder.stages.isoboot import iso_entry_name

    oses = _section(data, "oses")
    for name, image in _section(data, "images").items():
        isos = image.get("isos") if isinstance(image, dict) else None
        if not isinstance(isos, list):
            continue
        seen: dict[str, int] = {}
        for i, path in enumerate(isos):
            if not isinstance(path, str):
                continue
            entry = iso_entry_name(path)
            if entry in oses:
                problem = f'its menu entry would be "{entry}", the name of an OS: rename the file'
            elif entry in seen:
                problem = f'its menu entry would be "{entry}", as for isos[{seen[entry]}]: rename one of the files'
            else:
                seen[entry] = i
                continue
            # Located only when there is something to say: the list item, else the list, else the image.
            node = raw
            for step in ("images", name, "isos"):
                node = node.get(step) if isinstance(node, dict) else None
            mark = mark_of_key(node, i, _raw_mark(raw, ("images", name, "isos"), marks[name]))
            ctx.error(mark, f"images.{name}.isos[{i}]", problem)


def check_distinguishable(ctx: CheckContext, data: dict[str, Any], members: list[str], mark: Mark,
                          path: str) -> None:
    """Hosts on one universal stick must be told apart by their selectors or pins."""
    if len(members) < 2:
        return
    from hardware.match import indistinguishable_hosts

    for a, b in indistinguishable_hosts(data, members):
        ctx.error(mark, path, f'hosts "{a}" and "{b}" could never be told apart at first boot: give one '
                  "of them a more specific match (chassis, disks, display ...) or a pin (serial, mac)")


def check_roles(ctx: CheckContext, data: dict[str, Any], marks: dict[str, Mark]) -> None:
    oses = _section(data, "oses")
    for name, role in _section(data, "roles").items():
        if not isinstance(role, dict) or not isinstance(role.get("os"), list):
            continue
        if not all(isinstance(oses.get(o), dict) for o in role["os"]):
            continue  # an unknown OS is reported as such; judging the rest would only add noise
        systems = [o for o in role["os"] if isinstance(oses.get(o), dict) and oses[o].get("kind") == "system"]
        if role["os"] and not systems:
            ctx.error(marks[name], f"roles.{name}.os", "needs at least one OS of kind system to install")


def check_trust_root(ctx: CheckContext, raw: Any, data: dict[str, Any], marks: dict[str, Mark]) -> None:
    """trust_root names exports of its own role."""
    for name, role in _section(data, "roles").items():
        trusted = role.get("trust_root") if isinstance(role, dict) else None
        exports = role.get("exports") if isinstance(role, dict) else None
        if not isinstance(trusted, list) or not isinstance(exports, dict):
            continue
        for i, export in enumerate(trusted):
            if isinstance(export, str) and export not in exports:
                mark = _raw_mark(raw, ("roles", name, "trust_root"), marks[name])
                hint = did_you_mean(export, exports) or " (the role exports nothing)"
                ctx.error(mark, f"roles.{name}.trust_root[{i}]", f'"{export}" is not an export of this role{hint}')


# Folders of the system itself: a disk mounted over one would hide the installed OS.
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/run", "/sbin", "/sys", "/tmp",
                  "/usr", "/var")


def _raw_mark(raw: Any, path: tuple[str, ...], fallback: Mark) -> Mark:
    """Where the value at ``path`` of the raw profile was written, as close as is known."""
    from builder.profile.yamlsource import mark_of_key

    mark, node = fallback, raw
    for step in path:
        if not isinstance(node, dict) or step not in node:
            break
        mark, node = mark_of_key(node, step, mark), node[step]
    return mark


def check_users(ctx: CheckContext, raw: Any, data: dict[str, Any], fallback: Mark) -> None:
    """Two people with one name or one uid would be one person on every host's files."""
    from builder.profile.yamlsource import mark_of_key

    users = _section(data, "cluster").get("users")
    raw_cluster = raw.get("cluster") if isinstance(raw, dict) else None
    raw_users = raw_cluster.get("users") if isinstance(raw_cluster, dict) else None
    if not isinstance(users, list):
        return
    base = _raw_mark(raw, ("cluster", "users"), fallback)
    seen: dict[tuple[str, Any], int] = {}
    for i, u in enumerate(users):
        if not isinstance(u, dict):
            continue
        for key in ("name", "uid"):
            value = u.get(key)
            if value is None or value is INVALID:
                continue
            if (key, value) in seen:
                mark = mark_of_key(raw_users, i, base) if isinstance(raw_users, list) else base
                ctx.error(mark, f"cluster.users[{i}].{key}", f"{value} is also cluster.users[{seen[key, value]}]'s "
                          f"{key}: each person needs their own")
            else:
                seen[key, value] = i


def check_volumes(ctx: CheckContext, raw: Any, data: dict[str, Any], marks: dict[str, Mark]) -> None:
    namespace = _section(data, "cluster", "fusion").get("namespace", "/n")
    for name, role in _section(data, "roles").items():
        volumes = role.get("volumes") if isinstance(role, dict) else None
        if not isinstance(volumes, dict):
            continue
        seen: dict[str, str] = {}
        for vname, vol in volumes.items():
            path = vol.get("path") if isinstance(vol, dict) else None
            if not isinstance(path, str):
                continue
            where = f"roles.{name}.volumes.{vname}.path"
            mark = _raw_mark(raw, ("roles", name, "volumes", vname, "path"), marks[name])
            clean = path.rstrip("/")
            if clean in SYSTEM_FOLDERS or any(clean.startswith(f"{s}/") for s in ("/proc", "/sys", "/dev", "/run")):
                ctx.error(mark, where, f"{path} is a folder of the system itself: mount data under "
                          "/srv, /mnt or /home instead")
            elif isinstance(namespace, str) and (clean == namespace or clean.startswith(f"{namespace}/")):
                ctx.error(mark, where, f"{path} is inside the cluster namespace {namespace}, where peers "
                          "are mounted")
            if clean in seen:
                ctx.error(mark, where, f'{path} is also the path of volume "{seen[clean]}"')
            seen.setdefault(clean, vname)


def check_oses(ctx: CheckContext, data: dict[str, Any], marks: dict[str, Mark]) -> None:
    for name, os_ in _section(data, "oses").items():
        if isinstance(os_, dict) and os_.get("kind") == "iso" and "path" not in os_:
            ctx.error(marks[name], f"oses.{name}", 'missing "path": the ISO file this entry boots')


def section_marks(raw: Any, section: str, fallback: Mark) -> dict[str, Mark]:
    """Where each entry of a section was declared, for messages about whole entries."""
    from builder.profile.yamlsource import mark_of_key

    sec = raw.get(section) if isinstance(raw, dict) else None
    if not isinstance(sec, dict):
        return {}
    return {k: mark_of_key(sec, k, fallback) for k in sec}


def check_whole(ctx: CheckContext, raw: Any, data: dict[str, Any], boards: set[str], fallback: Mark) -> None:
    check_references(ctx, data, boards)
    marks = {s: section_marks(raw, s, fallback) for s in ("oses", "roles", "hosts", "images")}
    check_oses(ctx, data, marks["oses"])
    check_roles(ctx, data, marks["roles"])
    check_volumes(ctx, raw, data, marks["roles"])
    check_trust_root(ctx, raw, data, marks["roles"])
    check_users(ctx, raw, data, fallback)
    check_network(ctx, raw, data, fallback)
    assign_addresses(ctx, raw, data, marks["hosts"])
    # Distinguishability needs every reference to be sound; judge it only then.
    check_image_isos(ctx, raw, data, marks["images"])
    check_images(ctx, data, marks["images"], distinguish=not ctx.diag)


def new_context() -> CheckContext:
    return CheckContext(Diagnostics())

"""First boot's switches on the kernel command line (``clusterctl.*``)."""

from __future__ import annotations

from dataclasses import dataclass

AFTER = ("reboot", "poweroff", "none")


@dataclass
class Options:
    unattended: bool | None = None  # None: as the profile says (cluster.unattended)
    host: str | None = None  # force this host: no matching, no question (disk safety still holds)
    after: str = "reboot"  # what to do once installed
    install: bool = True  # clusterctl.install=0: leave the stick's system running, no first boot
    # A sealed stick's passphrase, unattended (weaker: any local user reads /proc/cmdline, and
    # it is written in the boot menu); one word, no spaces.
    passphrase: str | None = None


class CmdlineError(ValueError):
    pass


def parse(text: str) -> Options:
    opts = Options()
    for word in text.split():
        key, _, value = word.partition("=")
        if not key.startswith("clusterctl."):
            continue
        name = key.removeprefix("clusterctl.")
        if name == "unattended":
            opts.unattended = value in ("", "1", "yes", "true")
        elif name == "host":
            opts.host = value or None
        elif name == "after":
            if value not in AFTER:
                raise CmdlineError(f"clusterctl.after={value}: use one of {', '.join(AFTER)}")
            opts.after = value
        elif name == "passphrase":
            opts.passphrase = value or None
        elif name == "install":
            opts.install = value not in ("0", "no", "false")
    return opts


def read(path: str = "/proc/cmdline") -> Options:
    with open(path, encoding="utf-8") as f:
        return parse(f.read())

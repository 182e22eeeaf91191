"""``clusterctl build`` (profile → images) and ``clusterctl flash`` (image → removable disk)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core import exitcodes


def cmd_build(args: argparse.Namespace) -> int:
    from builder.build import Builder, BuildError, CacheBusy
    from builder.cache import StageCache
    from builder.commands.profile_cmds import build_folders, load_or_report
    from builder.passphrase import PassphraseError, stick_passphrase
    from builder.plan import PlanError
    from builder.report import JsonReporter, QuietReporter, Reporter, RichReporter
    from builder.secrets import IdentityRefused, StickPassphraseNeeded, needs_stick_passphrase
    from builder.stages.image import ImageTooSmall
    from builder.stages.overlay import OverlayError

    loaded = load_or_report(args.profile, args.json, build_folders(args))
    if isinstance(loaded, int):
        return loaded
    try:
        passphrase = (stick_passphrase(args.stick_passphrase_file, confirm=True)
                      if needs_stick_passphrase(loaded.model, args.image) else None)
    except PassphraseError as err:
        print(f"clusterctl: {err}", file=sys.stderr)
        return exitcodes.USAGE
    reporter: Reporter = (JsonReporter() if args.json else QuietReporter() if args.quiet
                          else RichReporter(explain=args.explain))
    cache = StageCache(Path(args.cache_dir) if args.cache_dir else None)
    try:
        builder = Builder(loaded, out_dir=Path(args.out), cache=cache, reporter=reporter, images=args.image,
                          ca_dir=Path(args.ca_dir) if args.ca_dir else None, stick_passphrase=passphrase)
        outcome = builder.run()
    except (PlanError, ImageTooSmall, OverlayError, IdentityRefused, StickPassphraseNeeded) as err:
        reporter.close()
        print(f"clusterctl: {err}", file=sys.stderr)
        return exitcodes.USAGE
    except CacheBusy as err:
        reporter.close()
        print(f"clusterctl: {err}", file=sys.stderr)
        return exitcodes.FAILED
    except BuildError as err:
        reporter.close()
        if not args.json:
            print(f"clusterctl: build failed in stage {err.stage}; its log: {err.log}", file=sys.stderr)
        return exitcodes.FAILED
    finally:
        reporter.close()
        cache.close()
    built = [r for r in outcome.results.values() if not r.reused]
    if args.json:
        print(json.dumps({"event": "done", "manifest": str(outcome.manifest),
                          "images": {n: i["output"] for n, i in outcome.plan.images.items()},
                          "built": [r.stage.name for r in built],
                          "reused": [r.stage.name for r in outcome.results.values() if r.reused]}))
    elif not args.quiet:
        for name, info in outcome.plan.images.items():
            print(f"{info['output']}  ({name}: {', '.join(info['hosts'])}; {', '.join(info['oses'])})")
        print(f"{outcome.manifest}  ({len(built)} stage(s) built, "
              f"{len(outcome.results) - len(built)} reused)")
    return exitcodes.OK


def cmd_flash(args: argparse.Namespace) -> int:
    from builder.flash import FlashError, FlashRefused, flash

    try:
        flash(Path(args.image), Path(args.device), force=args.force, assume_yes=args.yes, verify=not args.no_verify)
    except FlashRefused as err:
        print(f"clusterctl: {err}", file=sys.stderr)
        return exitcodes.USAGE
    except FlashError as err:
        print(f"clusterctl: {err}", file=sys.stderr)
        return exitcodes.FAILED
    return exitcodes.OK


def register(sub: Any) -> None:
    p = sub.add_parser("build", help="build the profile's images (cached stage by stage)",
                       description="Build every image of PROFILE into OUT/<cluster>/, reusing cached stages.")
    p.add_argument("profile", metavar="PROFILE")
    p.add_argument("--image", action="append", metavar="NAME", help="build only this image (repeatable)")
    p.add_argument("--out", default="images", help="output folder (default: images)")
    p.add_argument("--cache-dir", default=None, help="the stage cache (default ~/.cache/clusterctl)")
    p.add_argument("--ca-dir", default=None, metavar="DIR",
                   help="the cluster CA that issues host identities (default $CLUSTERCTL_CA_DIR, else "
                        "~/.config/clusterctl/<cluster>/ca; made on first use)")
    p.add_argument("--stick-passphrase-file", metavar="FILE",
                   help="with cluster.stick_secrets: passphrase, the passphrase that seals the stick's host keys "
                        "(its first line; default $CLUSTERCTL_STICK_PASSPHRASE, else asked on the terminal)")
    p.add_argument("--explain", action="store_true", help="say why each stage is built or reused")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout, one per stage event")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("flash", help="write an image to a removable disk (using its .bmap) and verify it",
                       description="Show DEVICE, refuse anything but an unmounted removable disk unless "
                                   "--force, write IMAGE's mapped blocks, read them back and compare.")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("--force", action="store_true",
                   help="allow a non-removable disk or a regular file as the target")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before writing")
    p.add_argument("--no-verify", action="store_true", help="skip reading back what was written")
    p.set_defaults(func=cmd_flash)

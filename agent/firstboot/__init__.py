"""First boot from the stick: recognise the machine, install onto its disk, reboot.

Runs inside the images on Debian bookworm's python3 (standard library only, plus the
project's ``hardware`` package); the tools are util-linux (sfdisk), e2fsprogs (e2image,
e2fsck, resize2fs, debugfs) and mtools. Everything works on a whole-disk device or a
plain file through byte offsets, so the same code is tested on sparse files.
"""

"""Block maps in bmap-tools' XML format (version 2.0), computed from a sparse image.

``bmaptool copy --bmap IMAGE.bmap IMAGE DEVICE`` then writes only the mapped blocks and
checks each range's sha256. :func:`read_bmap` is the reader ``clusterctl flash`` uses.
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from builder.sparse import data_extents

BLOCK = 4096
_ZERO_SUM = "0" * 64


@dataclass(frozen=True)
class Bmap:
    image_size: int
    block_size: int
    ranges: list[tuple[int, int, str]]  # first block, last block (inclusive), sha256 of the range

    @property
    def mapped_blocks(self) -> int:
        return sum(last - first + 1 for first, last, _ in self.ranges)


def compute_bmap(image: Path, block_size: int = BLOCK) -> Bmap:
    ranges: list[tuple[int, int, str]] = []
    with open(image, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        for start, end in data_extents(fd, size):
            first, last = start // block_size, (end - 1) // block_size
            # Whole blocks only: extents are block-aligned in practice; widen if not.
            lo, hi = first * block_size, min((last + 1) * block_size, size)
            h = hashlib.sha256()
            f.seek(lo)
            left = hi - lo
            while left:
                chunk = f.read(min(left, 8 << 20))
                h.update(chunk)
                left -= len(chunk)
            if ranges and ranges[-1][1] >= first:  # widened into the previous range: merge by rehash
                raise ValueError(f"{image}: data extents are not block-aligned at {start}")
            ranges.append((first, last, h.hexdigest()))
    return Bmap(size, block_size, ranges)


def render_bmap(bmap: Bmap) -> str:
    blocks = (bmap.image_size + bmap.block_size - 1) // bmap.block_size
    lines = [
        '<?xml version="1.0" ?>',
        "<!-- Written by clusterctl from the image's sparse map. Flash with",
        "     'clusterctl flash' or 'bmaptool copy'. -->",
        '<bmap version="2.0">',
        f"    <ImageSize> {bmap.image_size} </ImageSize>",
        f"    <BlockSize> {bmap.block_size} </BlockSize>",
        f"    <BlocksCount> {blocks} </BlocksCount>",
        f"    <MappedBlocksCount> {bmap.mapped_blocks} </MappedBlocksCount>",
        "    <ChecksumType> sha256 </ChecksumType>",
        f"    <BmapFileChecksum> {_ZERO_SUM} </BmapFileChecksum>",
        "    <BlockMap>",
    ]
    for first, last, digest in bmap.ranges:
        span = f"{first}-{last}" if last != first else f"{first}"
        lines.append(f'        <Range chksum="{digest}"> {span} </Range>')
    lines += ["    </BlockMap>", "</bmap>", ""]
    text = "\n".join(lines)
    # The file's own checksum is taken with the field all zeros, then filled in (bmap 2.0).
    own = hashlib.sha256(text.encode()).hexdigest()
    return text.replace(_ZERO_SUM, own, 1)


def write_bmap(image: Path, out: Path) -> Bmap:
    bmap = compute_bmap(image)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(render_bmap(bmap))
    os.replace(tmp, out)
    return bmap


class BmapError(ValueError):
    pass


def read_bmap(path: Path) -> Bmap:
    """Parse and check a bmap file (its own checksum included)."""
    text = path.read_text()
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise BmapError(f"{path}: not a bmap file ({err})") from err
    if root.tag != "bmap" or not root.get("version", "").startswith("2."):
        raise BmapError(f"{path}: only bmap version 2 is supported")

    def num(tag: str) -> int:
        el = root.find(tag)
        if el is None or el.text is None:
            raise BmapError(f"{path}: <{tag}> is missing")
        return int(el.text.strip())

    if (root.findtext("ChecksumType") or "").strip() != "sha256":
        raise BmapError(f"{path}: only sha256 checksums are supported")
    own = (root.findtext("BmapFileChecksum") or "").strip()
    if hashlib.sha256(text.replace(own, _ZERO_SUM, 1).encode()).hexdigest() != own:
        raise BmapError(f"{path}: the file's own checksum does not match (damaged or edited)")
    ranges = []
    for el in root.iter("Range"):
        span = (el.text or "").strip()
        first, _, last = span.partition("-")
        ranges.append((int(first), int(last or first), el.get("chksum", "")))
    return Bmap(num("ImageSize"), num("BlockSize"), ranges)

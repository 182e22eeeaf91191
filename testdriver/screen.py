"""A guest's screen and keyboard, as a person at the box has them: keys typed on the emulated
keyboard (QMP ``send-key``), and the screen read back (QMP ``screendump``, then OCR).

Like the NixOS test driver's ``send_chars`` and ``get_screen_text``: tesseract reads the
console's text from a screenshot, scaled up and inverted (light text on black reads poorly).
OCR mistakes the odd character, so checks look for words, not exact lines (:func:`shows`).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image, ImageOps

# QEMU's key names (qapi QKeyCode) for characters; a tuple is keys pressed together.
_PLAIN = {" ": "spc", "\n": "ret", "\t": "tab", "-": "minus", "=": "equal", ",": "comma", ".": "dot",
          "/": "slash", ";": "semicolon", "'": "apostrophe", "[": "bracket_left", "]": "bracket_right",
          "\\": "backslash", "`": "grave_accent", "\b": "backspace", "\x1b": "esc"}
_SHIFTED = {"!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8", "(": "9", ")": "0",
            "_": "minus", "+": "equal", "<": "comma", ">": "dot", "?": "slash", ":": "semicolon", '"': "apostrophe",
            "{": "bracket_left", "}": "bracket_right", "|": "backslash", "~": "grave_accent"}


class ScreenError(RuntimeError):
    pass


def keys_for(char: str) -> tuple[str, ...]:
    """The keys a US keyboard presses for ``char``."""
    if char in _PLAIN:
        return (_PLAIN[char],)
    if char in _SHIFTED:
        return ("shift", _SHIFTED[char])
    if char.isascii() and (char.isdigit() or char.islower()):
        return (char,)
    if char.isascii() and char.isupper():
        return ("shift", char.lower())
    raise ScreenError(f"no key for {char!r} on a US keyboard")


def send_chars(qmp: Callable[..., object], text: str, delay: float = 0.05) -> None:
    """Type ``text`` on the guest's keyboard, one key (chord) at a time."""
    for char in text:
        keys = keys_for(char)
        qmp("send-key", keys=[{"type": "qcode", "data": k} for k in keys], **{"hold-time": 60})
        time.sleep(delay)


def screenshot(qmp: Callable[..., object], path: Path) -> Path:
    """The guest's display as a PNG file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    qmp("screendump", filename=str(path), format="png")
    return path


def read_text(png: Path, scale: int = 2) -> str:
    """The text on a screenshot, by tesseract."""
    img = Image.open(png).convert("L")
    img = ImageOps.invert(img).resize((img.width * scale, img.height * scale), Image.Resampling.LANCZOS)
    scaled = png.with_name(png.stem + ".ocr.png")
    img.save(scaled)
    # One thread: tesseract's OpenMP threads fight the guests for this machine's cores (9 s instead
    # of 2 s per screen, measured beside a TCG guest).
    proc = subprocess.run(["tesseract", str(scaled), "-", "--psm", "6"], capture_output=True, text=True,
                          env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    if proc.returncode != 0:
        raise ScreenError(f"tesseract failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def shows(text: str, phrase: str) -> bool:
    """Whether OCR'd ``text`` holds ``phrase``, spaces and case aside."""
    return _norm(phrase) in _norm(text)


def wait_for_text(read: Callable[[], str], phrases: Iterable[str], timeout: float, every: float = 2.0) -> str:
    """Read the screen until it shows every phrase; the text read last."""
    wanted = list(phrases)
    deadline = time.monotonic() + timeout
    text = ""
    while True:
        text = read()
        if all(shows(text, p) for p in wanted):
            return text
        if time.monotonic() > deadline:
            missing = [p for p in wanted if not shows(text, p)]
            raise ScreenError(f"the screen never showed {missing} within {timeout:.0f} s; it shows:\n{text}")
        time.sleep(every)

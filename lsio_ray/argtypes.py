"""argparse types shared by every ``lsio-ray`` command: sizes, durations, shapes,
positive integers.  Each raises ``argparse.ArgumentTypeError`` with what was wrong."""

from __future__ import annotations

import argparse

from lsio_ray.io.config import parse_duration, parse_size

__all__ = ["duration", "positive", "shape", "size"]


def size(text: str) -> int:
    """``4K``, ``64M``, ``1G`` or a plain number of bytes."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration(text: str) -> float:
    """``10s``, ``2m``, ``500ms`` or a plain number of seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(text: str) -> int:
    """An integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def shape(text: str) -> tuple[int, ...]:
    """``8,256,256`` (or ``8x256x256``): positive integer sizes, nothing else.

    Strict: every part between the separators must be a positive integer written in
    digits (spaces around it allowed), so ``16,128,12x``, ``16,,128``, ``16,128,`` and
    ``8x256,256`` are refused rather than read as a shorter or different shape."""
    sep = "," if "," in text else "x"
    parts = [p.strip() for p in text.split(sep)]
    for part in parts:
        if not part.isascii() or not part.isdigit():
            what = "an empty size" if not part else f"{part!r} is not a positive integer"
            raise argparse.ArgumentTypeError(f"not a shape: {text!r}: {what} (use e.g. 8,256,256)")
    out = tuple(int(p) for p in parts)
    if any(s <= 0 for s in out):
        raise argparse.ArgumentTypeError(f"not a shape of positive sizes: {text!r}")
    return out

"""The images a succeeded task links to: tiny but real PNGs, served under ``/_sim/images/``.

Each image is a solid 8x8 RGB square whose colour is derived from the task id and the image
index, so a client that downloads results gets distinct, valid files without any storage.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

IMAGE_SIDE_PX = 8
IMAGE_ROUTE = "/_sim/images/{task_id}/{index}.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE_RGB = 2
_BIT_DEPTH = 8
_FILTER_NONE = b"\x00"


def image_path(task_id: str, index: int) -> str:
    """The path (without scheme and host) of a task's ``index``-th output image."""
    return IMAGE_ROUTE.format(task_id=task_id, index=index)


def image_colour(task_id: str, index: int) -> tuple[int, int, int]:
    """A stable colour per task and image."""
    digest = hashlib.sha256(f"{task_id}/{index}".encode()).digest()
    return digest[0], digest[1], digest[2]


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid, minimal PNG (IHDR, one IDAT, IEND) filled with one colour."""
    header = struct.pack(">IIBBBBB", width, height, _BIT_DEPTH, _COLOUR_TYPE_RGB, 0, 0, 0)
    row = _FILTER_NONE + bytes(rgb) * width
    pixels = zlib.compress(row * height)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def task_image_png(task_id: str, index: int) -> bytes:
    """The PNG behind ``image_path(task_id, index)``."""
    return solid_png(IMAGE_SIDE_PX, IMAGE_SIDE_PX, image_colour(task_id, index))

"""A writer for STORED (uncompressed) zip archives, byte for byte what :mod:`zipfile` writes.

Batch issuance builds each entry (local header + data) in the worker process that signed the
certificate, so the parent only concatenates blobs and writes the central directory.
``zipfile.ZipFile.writestr`` in the parent cost ~30 µs per entry, three entries per
certificate, all on the one core the workers also need. The layout and every header field
match ``zipfile.ZipFile(BytesIO(), "w", ZIP_STORED)`` with ``writestr(ZipInfo(...))`` (a
seekable file: sizes and CRC in the local header, no data descriptor), including ZIP64 end
records past 65,535 entries and ZIP64 offsets past 2 GiB; the unit tests compare the bytes.
"""

from __future__ import annotations

import struct
import sys
import zlib
from collections.abc import Sequence

__all__ = ["Entry", "StoredZip", "dos_stamp", "local_entry"]

# zipfile's structFileHeader, structCentralDir, structEndArchive(64)(Locator).
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_END64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EXTRA = struct.Struct("<HHQ")

_ZIP64_LIMIT = (1 << 31) - 1  # zipfile.ZIP64_LIMIT
_FILECOUNT_LIMIT = (1 << 16) - 1  # zipfile.ZIP_FILECOUNT_LIMIT
_DEFAULT_VERSION = 20
_ZIP64_VERSION = 45
_UTF8_NAME = 0x800
# zipfile writes "made by" Unix everywhere but Windows; certctl runs on POSIX systems.
_CREATE_SYSTEM = 0 if sys.platform == "win32" else 3

# (offset of the local header inside its blob, CRC-32, size, encoded name, flag bits,
#  external attributes): what the central directory needs, small enough to pickle cheaply.
Entry = tuple[int, int, int, bytes, int, int]


def dos_stamp(date_time: tuple[int, int, int, int, int, int]) -> tuple[int, int]:
    """``(dostime, dosdate)`` for a ``(Y, M, D, h, m, s)`` tuple, as zipfile encodes it.

    Raises:
        ValueError: the year is before 1980 (zipfile refuses it too).
    """
    year, month, day, hour, minute, second = date_time
    if year < 1980:
        raise ValueError("ZIP does not support timestamps before 1980")
    return hour << 11 | minute << 5 | second // 2, (year - 1980) << 9 | month << 5 | day


def local_entry(
    name: str, data: bytes, mode: int, stamp: tuple[int, int], offset: int
) -> tuple[bytes, Entry]:
    """Return the local header + data of one file, and its central directory fields.

    ``mode`` is the Unix file mode (``0o100600``); ``offset`` is where the header will sit
    in the blob the caller concatenates (the parent adds the blob's own position).
    """
    size = len(data)
    if size * 1.05 > _ZIP64_LIMIT:  # zipfile would switch this entry to ZIP64
        raise ValueError(f"{name}: too large for a stored zip entry")
    # Names are the batch's safe file names (ASCII); anything else is UTF-8 flagged.
    try:
        encoded, flags = name.encode("ascii"), 0
    except UnicodeEncodeError:
        encoded, flags = name.encode("utf-8"), _UTF8_NAME
    crc = zlib.crc32(data)
    dostime, dosdate = stamp
    header = _LOCAL.pack(
        b"PK\003\004",
        _DEFAULT_VERSION,
        0,
        flags,
        0,  # ZIP_STORED
        dostime,
        dosdate,
        crc,
        size,
        size,
        len(encoded),
        0,
    )
    return header + encoded + data, (offset, crc, size, encoded, flags, mode << 16)


class StoredZip:
    """Blobs of local entries, appended in order, then one central directory and end record."""

    def __init__(self, stamp: tuple[int, int]) -> None:
        self._stamp = stamp
        self._parts: list[bytes] = []
        self._central: list[bytes] = []
        self._size = 0

    def add(self, blob: bytes, entries: Sequence[Entry]) -> None:
        """Append ``blob`` (concatenated :func:`local_entry` outputs) and its entries."""
        base = self._size
        dostime, dosdate = self._stamp
        pack = _CENTRAL.pack
        for offset, crc, size, name, flags, external in entries:
            header_offset = base + offset
            extra = b""
            version = _DEFAULT_VERSION
            if header_offset > _ZIP64_LIMIT:
                extra = _ZIP64_EXTRA.pack(1, 8, header_offset)
                header_offset = 0xFFFFFFFF
                version = _ZIP64_VERSION
            self._central.append(
                pack(
                    b"PK\001\002",
                    version,
                    _CREATE_SYSTEM,
                    version,
                    0,
                    flags,
                    0,
                    dostime,
                    dosdate,
                    crc,
                    size,
                    size,
                    len(name),
                    len(extra),
                    0,
                    0,
                    0,
                    external,
                    header_offset,
                )
                + name
                + extra
            )
        self._parts.append(blob)
        self._size += len(blob)

    def getvalue(self) -> bytes:
        """The whole archive."""
        start = self._size
        central = b"".join(self._central)
        count = len(self._central)
        tail: list[bytes] = []
        if count > _FILECOUNT_LIMIT or start > _ZIP64_LIMIT or len(central) > _ZIP64_LIMIT:
            end64_at = start + len(central)
            tail.append(
                _END64.pack(b"PK\006\006", 44, 45, 45, 0, 0, count, count, len(central), start)
            )
            tail.append(_END64_LOCATOR.pack(b"PK\006\007", 0, end64_at, 1))
            count = min(count, 0xFFFF)
            size, offset = min(len(central), 0xFFFFFFFF), min(start, 0xFFFFFFFF)
        else:
            size, offset = len(central), start
        tail.append(_END.pack(b"PK\005\006", 0, 0, count, count, size, offset, 0))
        return b"".join([*self._parts, central, *tail])

"""A bounded on-disk spool of encoded records, kept while the broker is away.

The spool is a directory of append-only segment files, ``000000000001.seg``,
``000000000002.seg``, ... named by a sequence number, so their order is the order records
were spooled. Each record is one frame::

    >I  value length    >H  key length    >I  CRC-32 of key + value    key    value

New records go to the *active* segment; it is sealed when it reaches ``segment_bytes`` (or
when the delivery thread wants to replay it). Sealed segments are replayed oldest first and a
segment is deleted only after every one of its records was acknowledged by the broker.

The size cap counts every segment file. When a record would take the spool over
``max_bytes`` it is **not written** (the newest record is dropped, :meth:`Spool.append`
returns False and the caller counts it): older records, already waiting longest, keep their
place and a segment being replayed is never cut from under the replay.

One process owns a spool directory at a time (an exclusive ``flock`` on ``spool.lock``); a
second one gets :class:`SpoolLockedError`. Records survive a crash of the process up to the
last :meth:`Spool.flush` (handed to the OS) and a crash of the machine up to the last
:meth:`Spool.sync` (fsync). A frame cut short by a crash, or one whose CRC does not match,
ends the reading of its segment; the frames after it are counted as lost.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from undertow.errors import UndertowError

_HEADER = struct.Struct(">IHI")
SUFFIX = ".seg"
LOCK_NAME = "spool.lock"


class SpoolError(UndertowError):
    """The spool directory cannot be used."""


class SpoolLockedError(SpoolError):
    """Another process holds the spool directory."""


@dataclass(frozen=True)
class Segment:
    """One sealed segment file."""

    seq: int
    path: Path


@dataclass(frozen=True)
class SegmentContents:
    """The records read from a segment, and how many bytes at its end could not be read."""

    records: list[tuple[bytes, bytes]]
    unreadable_bytes: int


def frame(key: bytes, value: bytes) -> bytes:
    """One record as written to a segment."""
    if len(key) > 0xFFFF:
        raise ValueError(f"spool keys are at most 65535 bytes, got {len(key)}")
    crc = zlib.crc32(value, zlib.crc32(key))
    return _HEADER.pack(len(value), len(key), crc) + key + value


def read_frames(data: bytes) -> SegmentContents:
    """The records in a segment's bytes, up to the first torn or corrupt frame."""
    records: list[tuple[bytes, bytes]] = []
    pos = 0
    size = len(data)
    while pos + _HEADER.size <= size:
        value_len, key_len, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        end = start + key_len + value_len
        if end > size:
            break
        key = data[start : start + key_len]
        value = data[start + key_len : end]
        if zlib.crc32(value, zlib.crc32(key)) != crc:
            break
        records.append((key, value))
        pos = end
    return SegmentContents(records, size - pos)


class Spool:
    """Append-only, size-capped segment files under one directory. Not thread-safe: the
    SDK's delivery thread is its only user."""

    def __init__(self, directory: Path | str, max_bytes: int, segment_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = (self.directory / LOCK_NAME).open("a")
        except OSError as exc:
            raise SpoolError(f"cannot use {self.directory} as a spool: {exc}") from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.close()
            raise SpoolLockedError(
                f"{self.directory} is held by another process; give each process its own spool_dir"
            ) from exc
        self._sealed: list[Segment] = []
        self._sizes: dict[int, int] = {}
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                seq = int(path.stem)
            except ValueError:
                continue
            size = path.stat().st_size
            if size == 0:
                path.unlink()
                continue
            self._sealed.append(Segment(seq, path))
            self._sizes[seq] = size
        self._next_seq = (self._sealed[-1].seq + 1) if self._sealed else 1
        self._active: BinaryIO | None = None
        self._active_seq = 0
        self._active_records = 0
        self._dirty = False
        self._closed = False

    # -- writing --------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Bytes in every segment file, the active one included."""
        return sum(self._sizes.values())

    def append(self, key: bytes, value: bytes) -> bool:
        """Write one record; False (and nothing written) when it would exceed ``max_bytes``."""
        data = frame(key, value)
        if self._closed or self.size_bytes + len(data) > self.max_bytes:
            return False
        if self._active is None:
            self._open_active()
        assert self._active is not None
        self._active.write(data)
        self._sizes[self._active_seq] += len(data)
        self._active_records += 1
        self._dirty = True
        if self._sizes[self._active_seq] >= self.segment_bytes:
            self.seal()
        return True

    def _open_active(self) -> None:
        self._active_seq = self._next_seq
        self._next_seq += 1
        path = self._path(self._active_seq)
        self._active = path.open("ab")
        self._sizes[self._active_seq] = 0
        self._active_records = 0
        _fsync_dir(self.directory)

    def flush(self) -> None:
        """Hand buffered writes to the OS: they survive a crash of this process."""
        if self._active is not None:
            self._active.flush()

    def sync(self) -> None:
        """Flush and fsync the active segment: its records survive a crash of the machine."""
        if self._active is not None and self._dirty:
            self._active.flush()
            os.fsync(self._active.fileno())
            self._dirty = False

    def seal(self) -> Segment | None:
        """Close the active segment (synced) so it can be replayed; None when there is none."""
        if self._active is None:
            return None
        self.sync()
        self._active.close()
        self._active = None
        segment = Segment(self._active_seq, self._path(self._active_seq))
        if self._active_records == 0:
            segment.path.unlink(missing_ok=True)
            self._sizes.pop(segment.seq, None)
            return None
        self._sealed.append(segment)
        return segment

    @property
    def active_records(self) -> int:
        """Records in the active (not yet sealed) segment."""
        return self._active_records if self._active is not None else 0

    # -- reading --------------------------------------------------------------------------

    def sealed(self) -> list[Segment]:
        """Sealed segments, oldest first."""
        return list(self._sealed)

    def read(self, segment: Segment) -> SegmentContents:
        """The records of a sealed segment, in the order they were spooled."""
        return read_frames(segment.path.read_bytes())

    def delete(self, segment: Segment) -> None:
        """Remove a segment whose records were all delivered."""
        segment.path.unlink(missing_ok=True)
        self._sizes.pop(segment.seq, None)
        self._sealed = [s for s in self._sealed if s.seq != segment.seq]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """Every readable record, sealed segments first, then the active one (flushed)."""
        self.flush()
        for seq in sorted(self._sizes):
            yield from read_frames(self._path(seq).read_bytes()).records

    def close(self) -> None:
        """Sync the active segment and release the directory."""
        if self._closed:
            return
        try:
            self.seal()
        finally:
            self._closed = True
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}{SUFFIX}"


def _fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable (best effort where the OS refuses)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

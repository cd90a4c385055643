"""The on-disk spool: order, segments, the size cap, torn tails, the lock
(services/sdk/spool.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from undertow.services.sdk.spool import Spool, SpoolLockedError, frame, read_frames


def records(count: int, size: int = 100) -> list[tuple[bytes, bytes]]:
    return [(b"k%d" % i, bytes([i % 256]) * size) for i in range(count)]


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    wanted = records(30)
    for key, value in wanted:
        assert spool.append(key, value)
    sealed = spool.sealed()
    assert len(sealed) >= 3
    assert [s.seq for s in sealed] == sorted(s.seq for s in sealed)
    assert list(spool) == wanted
    replayed = [r for segment in sealed for r in spool.read(segment).records]
    assert replayed == wanted[: len(replayed)]


def test_delete_after_replay_frees_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=500)
    for key, value in records(10):
        spool.append(key, value)
    before = spool.size_bytes
    first = spool.sealed()[0]
    size = first.path.stat().st_size
    spool.delete(first)
    assert not first.path.exists()
    assert spool.size_bytes == before - size
    assert first not in spool.sealed()


def test_cap_drops_the_newest_record(tmp_path: Path) -> None:
    one = len(frame(b"k0", bytes(100)))
    spool = Spool(tmp_path, max_bytes=one * 5 + 10, segment_bytes=one * 2)
    results = [spool.append(k, v) for k, v in records(8)]
    assert results == [True] * 5 + [False] * 3
    assert spool.size_bytes == one * 5
    assert [k for k, _ in spool] == [b"k0", b"k1", b"k2", b"k3", b"k4"]


def test_reopened_spool_keeps_records_and_continues_numbering(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    for key, value in records(3):
        spool.append(key, value)
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    assert len(again.sealed()) == 1
    again.append(b"new", b"v")
    again.seal()
    assert [s.seq for s in again.sealed()] == [1, 2]
    assert [k for k, _ in again] == [b"k0", b"k1", b"k2", b"new"]
    again.close()


def test_torn_tail_stops_reading_and_is_reported(tmp_path: Path) -> None:
    data = frame(b"a", b"first") + frame(b"b", b"second")
    contents = read_frames(data + frame(b"c", b"third")[:-2])
    assert contents.records == [(b"a", b"first"), (b"b", b"second")]
    assert contents.unreadable_bytes > 0
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF
    assert read_frames(bytes(corrupt)).records == [(b"a", b"first")]


def test_second_owner_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000, segment_bytes=100)
    with pytest.raises(SpoolLockedError):
        Spool(tmp_path, max_bytes=1000, segment_bytes=100)
    spool.close()
    Spool(tmp_path, max_bytes=1000, segment_bytes=100).close()


def test_seal_of_empty_active_segment_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000, segment_bytes=100)
    assert spool.seal() is None
    assert spool.sealed() == []
    assert list(tmp_path.glob("*.seg")) == []

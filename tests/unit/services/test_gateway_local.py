"""The local backend's pure parts: stop sequences while streaming, the model cache key."""

from __future__ import annotations

from pathlib import Path

import pytest

from undertow.services.gateway.backends import BACKENDS, Backend, UnknownBackend, backend_class
from undertow.services.gateway.backends.local import StopFilter, cache_key


def stream(stops: list[str], pieces: list[str]) -> tuple[list[str], StopFilter]:
    f = StopFilter(stops)
    out = [f.push(p) for p in pieces]
    if not f.stopped:
        out.append(f.finish())
    return [o for o in out if o], f


def test_without_stops_everything_passes_at_once() -> None:
    out, f = stream([], ["a", "b"])
    assert out == ["a", "b"] and f.text == "ab" and not f.stopped


def test_stop_sequence_split_across_pieces_is_never_sent() -> None:
    out, f = stream(["STOP"], ["one ST", "O", "P two"])
    assert "".join(out) == "one " and f.stopped and f.text == "one "


def test_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    out, f = stream(["STOP"], ["one ST", "ART"])
    assert "".join(out) == "one START" and not f.stopped
    assert out[0] == "one "  # "ST" waited for the next piece


def test_earliest_of_several_stops_wins() -> None:
    out, f = stream(["\n\n", "END"], ["a END b\n\n"])
    assert "".join(out) == "a " and f.text == "a "


@pytest.mark.parametrize("pieces", [["xyz"], ["x", "y", "z"], ["xy", "z"]])
def test_concatenation_is_the_final_text(pieces: list[str]) -> None:
    out, f = stream(["y"], pieces)
    assert "".join(out) == f.text == "x"


def test_cache_key_changes_with_the_file(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"one")
    first = cache_key(str(tmp_path), "m.gguf")
    assert first == cache_key(str(tmp_path), "m.gguf") and first.startswith("m-")
    gguf.write_bytes(b"longer")
    assert cache_key(str(tmp_path), "m.gguf") != first


def test_registry_names_every_backend() -> None:
    for name in BACKENDS:
        cls = backend_class(name)
        assert issubclass(cls, Backend) and cls.name == name
    with pytest.raises(UnknownBackend, match="expected one of"):
        backend_class("nope")

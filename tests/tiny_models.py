"""A tiny GPT-2 and its BPE tokenizer, built in milliseconds from a config, for tests that
train or load a causal LM (the fine-tune job, the action workers): no hub, no weights to ship.

The training pairs repeat a question's words in a fixed frame, so a LoRA adapter on the tiny
model learns them in a few dozen steps.
"""

from __future__ import annotations

from typing import Any

ANIMALS = ["cat", "dog", "fox", "owl", "cow", "hen", "pig", "bee", "ant", "elk", "yak", "ram"]
COLOURS = ["red", "blue", "green", "black"]
EOS = "<|endoftext|>"
# The tiny model's embeddings and head are random and frozen: adapting every projection, not
# only attention (the GPT-2 default), lets 40 steps show a clear fall of the held-out loss.
ALL_LINEAR = ("c_attn", "c_proj", "c_fc")


def colour_pairs() -> list[tuple[str, str]]:
    """48 (question, answer) pairs: ``what colour is the red cat?`` / ``the red cat is red``."""
    return [
        (f"what colour is the {c} {a}?", f"the {c} {a} is {c}, of course.")
        for a in ANIMALS
        for c in COLOURS
    ]


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (400 tokens) trained on the colour pairs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"{q}\n{a}" for q, a in colour_pairs()] * 4
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, model_max_length=128)


def tiny_gpt2(tokenizer: Any, seed: int = 0) -> Any:
    """A 2-layer, 64-wide GPT-2 over ``tokenizer``'s vocabulary, seeded, in eval mode."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_layer=2,
        n_embd=64,
        n_head=2,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.eval()
    return model

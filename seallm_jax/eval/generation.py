"""Batched generation for the generative tasks, on top of `seallm_jax.model.generate`.

Prompts are sorted by length and cut into batches of one fixed size (a short last batch is padded
with copies), so decoding compiles once per prompt-length bucket, not once per batch or example.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from seallm_jax import sharding
from seallm_jax.model import generate as generate_module

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": ...}


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Greedy decoding shapes: fixed batch size, prompt-length buckets, a cap on prompt length."""

    batch_size: int = 8
    # Prompts are left-padded to a power of two at least this long (one compile per bucket): the
    # prefill computes every padded position, so a short floor (a 20-token prompt pads to 32, not 64).
    min_prompt_bucket: int = 16
    # Longer prompts keep their last `max_prompt_length` tokens (the question sits at the end).
    max_prompt_length: int = 2048
    # False: decode through the layer scan, holding no second copy of the weights (`generate`), slower.
    unroll_layers: bool = True
    # transformers' repetition penalty on the prompt's and the output's tokens (1.0 = off), as `generate`.
    repetition_penalty: float = 1.0
    show_progress: bool = True


class BatchGenerator:
    """Greedy completions for many prompts, with compile counting and optional batch sharding."""

    def __init__(self, model: nnx.Module, tokenizer: PreTrainedTokenizerBase,
                 config: GenerationConfig = GenerationConfig(), mesh: Mesh | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.mesh = mesh
        self.batch_size = config.batch_size
        if mesh is not None:
            divisor = sharding.batch_shard_count(mesh)
            self.batch_size = -(-config.batch_size // divisor) * divisor
        self.stop_ids = generate_module.stop_token_ids(tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else (self.stop_ids[0] if self.stop_ids else 0)
        self._compiles_at_start = self._cache_size()
        self._stop_string_tokens: dict[tuple[str, ...], list[int]] = {}
        self._first_line_masks = None

    @staticmethod
    def _cache_size() -> int:
        return generate_module._generate_jit._cache_size()

    @property
    def compile_count(self) -> int:
        """Programs the decoder compiled since this generator was made."""
        return self._cache_size() - self._compiles_at_start

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """A conversation in the tokenizer's chat template, ending with the assistant's turn opened."""
        return list(self.tokenizer.apply_chat_template(
            list(messages), tokenize=True, add_generation_prompt=True, return_dict=False
        ))

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                 stop_at_newline: bool = False, description: str = "generating") -> list[str]:
        """Greedy completions of token-id prompts, decoded; with `stop_at_newline`, their first non-empty line
        only (and decoding stops once it is complete)."""
        texts = []
        for ids in self.generate_tokens(prompts, max_new_tokens, first_line=stop_at_newline, description=description):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            texts.append(text.strip().split("\n")[0].strip() if stop_at_newline else text.strip())
        return texts

    def generate_tokens(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                        stop_ids: Sequence[int] | None = None, stop_strings: Sequence[str] = (),
                        first_line: bool = False, description: str = "generating", temperature: float = 0.0,
                        top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[list[int]]:
        """The new tokens of each prompt, in order, ending before the first of `stop_ids` (default: the
        tokenizer's stop tokens). Prompts longer than `max_prompt_length` keep their last tokens.

        With `stop_strings`, a row also stops *after* a token whose text holds one of them (that token is
        kept): a caller that cuts the text at the first occurrence of a stop string (as lm-eval does with
        `until`) gets the text it would get from decoding on, and a batch whose rows have all stopped ends
        early instead of decoding `max_new_tokens` (as `transformers`' stop-string criteria do).
        With `first_line`, a row stops once its first non-empty line is complete (`generate`'s
        `first_line_masks`), for a caller that keeps only `text.strip().split("\n")[0]`."""
        stop_ids = list(self.stop_ids if stop_ids is None else stop_ids)
        finish_ids = self._tokens_containing(tuple(stop_strings))
        if first_line and self._first_line_masks is None:
            self._first_line_masks = generate_module.first_line_masks(self.tokenizer, self.model.config.vocab_size)
        line_masks = self._first_line_masks if first_line else None
        prompts = [list(prompt)[-self.config.max_prompt_length:] for prompt in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        outputs: list[list[int]] = [[] for _ in prompts]
        batches = [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        for batch in tqdm(batches, desc=description, disable=not self.config.show_progress, leave=False):
            batch_prompts = [prompts[i] for i in batch]
            batch_prompts += [batch_prompts[-1]] * (self.batch_size - len(batch_prompts))
            tokens = self._generate(batch_prompts, max_new_tokens, stop_ids + finish_ids, sampling, line_masks)
            for row, index in enumerate(batch):
                outputs[index] = _until_stop(tokens[row].tolist(), set(stop_ids), set(finish_ids))
        return outputs

    def _tokens_containing(self, stop_strings: tuple[str, ...]) -> list[int]:
        if stop_strings not in self._stop_string_tokens:
            self._stop_string_tokens[stop_strings] = generate_module.tokens_containing(
                self.tokenizer, stop_strings, self.model.config.vocab_size)
        return self._stop_string_tokens[stop_strings]

    def _generate(self, batch_prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int],
                  sampling: dict, line_masks=None):
        def run():
            return generate_module.generate(
                self.model, batch_prompts, max_new_tokens=max_new_tokens, eos_token_ids=stop_ids,
                first_line_masks=line_masks,
                pad_token_id=self.pad_id, min_prompt_bucket=self.config.min_prompt_bucket,
                unroll_layers=self.config.unroll_layers, repetition_penalty=self.config.repetition_penalty,
                **sampling,
            )

        if self.mesh is None:
            return run()
        # Activations are constrained as in training (the batch over its mesh axes) while tracing.
        with sharding.activation_sharding(self.mesh):
            return run()


def _until_stop(ids: list[int], stop_ids: set[int], finish_ids: set[int]) -> list[int]:
    """A row's tokens before its first stop id, or through its first finishing token (what decoding emitted
    before it stopped: the padding after it is not text)."""
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[:position]
        if token in finish_ids:
            return ids[:position + 1]
    return ids

"""Qwen2Config: the model's hyper-parameters and the one place that knows Hugging Face field names.

`Qwen2Config.from_hf` reads a `config.json` (Qwen2 or Llama family); `to_hf` writes one that
`transformers` loads as `Qwen2ForCausalLM` (or `LlamaForCausalLM` for bias-free checkpoints).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from seallm_jax.errors import ConfigError, MissingDataError, check_dtype

SUPPORTED_ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"}
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
# Causal self-attention kernels (seallm_jax.model.attention): "auto" (the default) is "flash" when the
# sequence is longer than one key block and "xla" otherwise; "xla" dense reference (T x T scores),
# "flash" blockwise with O(T) memory (any backend), "cudnn" cuDNN's fused kernel (GPU, bf16/fp16),
# "splash" the Pallas TPU splash-attention kernel (TPU; Pallas interpret mode elsewhere, for tests).
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "flash", "cudnn", "splash")

# Released architectures by name: the shape fields of their Hugging Face config.json (every other
# field is the same as the dataclass default). `Qwen2Config.preset(name)`; the dataclass defaults are
# Qwen2-0.5B's, so `Qwen2Config() == Qwen2Config.preset("qwen2-0.5b")`.
PRESETS: dict[str, dict[str, Any]] = {
    "qwen2-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                       num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}
_DEFAULT_SHAPE = PRESETS["qwen2-0.5b"]


def read_config_json(path: str | os.PathLike) -> dict[str, Any]:
    """The dict in a `config.json` (given as the file or its directory); a malformed or missing file
    is a `UserError` that names it (and, for bad JSON, the line and column)."""
    path = os.fspath(path)
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.exists(file):
        where = f"{path!r} has no config.json" if os.path.isdir(path) else f"{file!r} does not exist"
        raise MissingDataError(f"{where}: expected a Hugging Face model directory (config.json + safetensors)")
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{file} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file} is not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file} holds a JSON {type(data).__name__}, expected an object of model fields")
    return data


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int = _DEFAULT_SHAPE["vocab_size"]
    hidden_size: int = _DEFAULT_SHAPE["hidden_size"]
    intermediate_size: int = _DEFAULT_SHAPE["intermediate_size"]
    num_hidden_layers: int = _DEFAULT_SHAPE["num_hidden_layers"]
    num_attention_heads: int = _DEFAULT_SHAPE["num_attention_heads"]
    num_key_value_heads: int = _DEFAULT_SHAPE["num_key_value_heads"]
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = _DEFAULT_SHAPE["tie_word_embeddings"]
    attention_bias: bool = True  # q/k/v biases: True for Qwen2, False for Llama-family checkpoints
    initializer_range: float = 0.02
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151643
    pad_token_id: int | None = None
    # Computation, not architecture: never written to config.json.
    # Any form `errors.check_dtype` takes (jnp.bfloat16, np.dtype, "bfloat16"); stored as the name.
    dtype: str = "float32"  # activations / matmul inputs ("bfloat16" for fast training)
    param_dtype: str = "float32"  # master weights
    remat: str = "none"  # rematerialisation of each decoder layer in the scan: see REMAT_POLICIES
    attention_impl: str = "auto"  # see ATTENTION_IMPLEMENTATIONS; docs/long_context.md
    attention_block_q: int = 128  # "flash": queries per tile (128 x 128 was fastest on CPU, docs/long_context.md)
    attention_block_k: int = 128  # "flash": keys per tile
    # Layers per iteration of the layer scan: 1 keeps compile time flat in depth; k > 1 compiles k
    # copies of the layer (compile time and program size grow ~k-fold) and lets XLA fuse across them.
    scan_unroll: int = 1
    model_type: str = "qwen2"  # "llama"/"mistral" when loaded from such a checkpoint

    def __post_init__(self):
        # Stored as names (jnp.bfloat16 or np.dtype("float32") in, "bfloat16" / "float32" out), so the
        # config compares, hashes and serializes the same however the dtype was typed.
        object.__setattr__(self, "dtype", check_dtype(self.dtype, "dtype"))
        object.__setattr__(self, "param_dtype", check_dtype(self.param_dtype, "param_dtype"))
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings", "head_dim"):
            value = getattr(self, name)
            if value is None and name == "head_dim":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r}: expected a positive integer")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                f"({self.num_attention_heads}); set head_dim explicitly"
            )
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat={self.remat!r}: expected one of {REMAT_POLICIES}")
        if self.attention_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(f"attention_impl={self.attention_impl!r}: expected one of {ATTENTION_IMPLEMENTATIONS}")
        if self.attention_impl == "cudnn" and self.dtype not in ("bfloat16", "float16"):
            raise ConfigError(f"attention_impl='cudnn' needs dtype bfloat16 or float16 (cuDNN's fused attention "
                              f"has no {self.dtype} kernel); use attention_impl='flash' for {self.dtype}")
        for name in ("attention_block_q", "attention_block_k", "scan_unroll"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r}: expected a positive integer")

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    def replace(self, **changes: Any) -> "Qwen2Config":
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **changes: Any) -> "Qwen2Config":
        """A released architecture by name (a key of `PRESETS`: "qwen2-0.5b", "qwen2-1.5b", "qwen2-7b"),
        with `changes` applied (computation fields such as `dtype` and `remat`, or any other field)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **changes})

    def num_parameters(self) -> int:
        e, i, v, l = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        q, kv = self.num_attention_heads * self.head_size, self.num_key_value_heads * self.head_size
        attention = e * q + 2 * e * kv + q * e + (q + 2 * kv if self.attention_bias else 0)
        per_layer = attention + 3 * e * i + 2 * e
        return v * e * (1 if self.tie_word_embeddings else 2) + l * per_layer + e

    def flops_per_token(self, sequence_length: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), matmuls and attention scores."""
        non_embedding = self.num_parameters() - self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        matmul_params = non_embedding + self.vocab_size * self.hidden_size  # the LM head is a matmul
        attention = 2 * self.num_hidden_layers * sequence_length * self.num_attention_heads * self.head_size
        return 3 * (2 * matmul_params + attention)

    # ---- Hugging Face config.json, both ways ---------------------------------------------------

    @classmethod
    def from_hf(cls, hf_config: dict[str, Any] | str | os.PathLike, **overrides: Any) -> "Qwen2Config":
        """From a `config.json` dict, or the path of a file or of a directory that holds one."""
        if not isinstance(hf_config, dict):
            hf_config = read_config_json(hf_config)
        architectures = hf_config.get("architectures") or []
        model_type = hf_config.get("model_type", "qwen2")
        if model_type not in SUPPORTED_ARCHITECTURES.values() or (
            architectures and architectures[0] not in SUPPORTED_ARCHITECTURES
        ):
            raise ConfigError(
                f"unsupported architecture {architectures or model_type!r}: seallm-jax supports "
                f"{sorted(SUPPORTED_ARCHITECTURES)}"
            )
        rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise ConfigError(f"unsupported rope_type {rope_type!r} in config.json: only the default rotary embedding is implemented")
        rope_theta = rope.get("rope_theta", hf_config.get("rope_theta", 10000.0))
        if model_type == "mistral" and hf_config.get("sliding_window"):
            raise ConfigError("Mistral with sliding_window attention is not supported (set sliding_window to null)")
        if model_type == "qwen2" and hf_config.get("use_sliding_window"):
            raise ConfigError("use_sliding_window=true is not supported")
        if hf_config.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"unsupported hidden_act {hf_config['hidden_act']!r}: expected 'silu'")
        if hf_config.get("mlp_bias"):
            raise ConfigError("mlp_bias=true is not supported")
        attention_bias = hf_config.get("attention_bias", model_type == "qwen2")
        num_heads = hf_config["num_attention_heads"]
        head_dim = hf_config.get("head_dim")
        if head_dim == hf_config["hidden_size"] // num_heads:
            head_dim = None
        fields = dict(
            vocab_size=hf_config["vocab_size"],
            hidden_size=hf_config["hidden_size"],
            intermediate_size=hf_config["intermediate_size"],
            num_hidden_layers=hf_config["num_hidden_layers"],
            num_attention_heads=num_heads,
            num_key_value_heads=hf_config.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            max_position_embeddings=hf_config.get("max_position_embeddings", 32768),
            rope_theta=float(rope_theta),
            rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=hf_config.get("tie_word_embeddings", False),
            attention_bias=bool(attention_bias),
            initializer_range=hf_config.get("initializer_range", 0.02),
            bos_token_id=hf_config.get("bos_token_id"),
            eos_token_id=hf_config.get("eos_token_id"),
            pad_token_id=hf_config.get("pad_token_id"),
            model_type=model_type,
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf(self) -> dict[str, Any]:
        """A `config.json` dict; bias-free models are written as Llama (Qwen2 always has q/k/v bias)."""
        qwen2 = self.attention_bias
        config = {
            "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"],
            "model_type": "qwen2" if qwen2 else "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_size,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rope_theta": self.rope_theta,  # for transformers < 5
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
            "use_cache": True,
        }
        if qwen2:
            config.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_hidden_layers)
        else:
            config.update(attention_bias=False, mlp_bias=False)
        return config

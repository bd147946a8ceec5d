"""TFDS builder `sea_corpus` for the shipped SEA corpus and for user corpora (local files).

Import `seallm_jax.data.tfds_sea` (needs tensorflow-datasets) to register the builder with TFDS;
`load_tfds` reads a prepared dataset back as documents.
"""
from seallm_jax.data.tfds_sea.loading import load_tfds
from seallm_jax.data.tfds_sea.sea_corpus_dataset_builder import Builder, SeaCorpusConfig, user_corpus_config

__all__ = ["Builder", "SeaCorpusConfig", "load_tfds", "user_corpus_config"]

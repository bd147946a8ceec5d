"""Held-out text of another domain than the shipped corpus (office-suite help/UI vs browser UI), per language.

Built from Debian packages by `seallm_jax.data.build_other_domain` (provenance: other_domain/PROVENANCE.md);
used by `seallm-jax lsn compare` to tell a language gain from a domain gain. Never trained on.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from seallm_jax.data.corpus import Document, load_documents

OTHER_DOMAIN_DIR = Path(__file__).parent / "other_domain"


def other_domain_manifest() -> dict:
    """manifest.json: per language its file, text count, Debian package and version, domain and license."""
    return json.loads((OTHER_DOMAIN_DIR / "manifest.json").read_text(encoding="utf-8"))


def other_domain_files(languages: Sequence[str] | None = None) -> dict[str, list[str]]:
    """{language: [path]} for the languages that have other-domain text (others are left out)."""
    available = other_domain_manifest()["languages"]
    wanted = available if languages is None else [lang for lang in languages if lang in available]
    return {lang: [str(OTHER_DOMAIN_DIR / available[lang]["file"])] for lang in wanted}


def load_other_domain(languages: Sequence[str] | None = None) -> dict[str, list[Document]]:
    """{language: documents} of the other-domain split."""
    return {lang: list(load_documents(paths[0], lang)) for lang, paths in other_domain_files(languages).items()}

"""Nested-dict parameter trees addressed by key paths: the helpers every module shares.

A path is a tuple of strings, e.g. ('model', 'layers', 'mlp', 'up_proj', 'kernel'); `path_names` turns a
`jax.tree_util` key path (DictKey / GetAttrKey / SequenceKey entries) into one.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Path = tuple[str, ...]


def path_names(key_path: Sequence[Any]) -> Path:
    """('model', 'layers', ...) from a `jax.tree_util` key path."""
    names = []
    for entry in key_path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
        else:
            names.append(str(entry))
    return tuple(names)


def get_path(tree: Any, path: Path) -> Any:
    """The subtree (or leaf) at `path`; KeyError if it is not there."""
    for key in path:
        tree = tree[key]
    return tree


def has_path(tree: Any, path: Path) -> bool:
    """Whether `path` leads to something in `tree` (a nested mapping, or anything with keys)."""
    for key in path:
        if not (isinstance(tree, Mapping) or hasattr(tree, "keys")) or key not in tree:
            return False
        tree = tree[key]
    return True


def set_path(tree: dict, path: Path, value: Any) -> None:
    """Put `value` at `path`, creating the dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value

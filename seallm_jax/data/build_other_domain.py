"""Rebuild the other-domain held-out text (seallm_jax/data/other_domain/) from Debian packages.

The shipped corpus is browser UI strings (Firefox); this split is text of another domain, so that an
evaluation can tell a language gain from a domain gain. Office-suite documentation (LibreOffice help
pages, prose) where Debian has it; LibreOffice's own UI and tooltips for th and ta; Chromium's UI for ms
and tl (a browser too: closer to the training domain, marked so in the manifest). No Debian package
holds my or lo text of this kind, so they are absent.

    apt-get update && python -m seallm_jax.data.build_other_domain --out seallm_jax/data/other_domain --download
    python -m seallm_jax.data.build_other_domain --out DIR --debs DIR_WITH_DEBS   # offline, from .deb files
"""
from __future__ import annotations

import argparse
import gettext
import hashlib
import html.parser
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from seallm_jax.data.build_corpus import clean_text, is_language_text, write_jsonl_gz

# language -> (kind, Debian package, locale inside the package, domain description)
SOURCES: dict[str, tuple[str, str, str, str]] = {
    "en": ("help", "libreoffice-help-en-gb", "en-GB", "office-suite documentation (LibreOffice help)"),
    "zh": ("help", "libreoffice-help-zh-cn", "zh-CN", "office-suite documentation (LibreOffice help)"),
    "id": ("help", "libreoffice-help-id", "id", "office-suite documentation (LibreOffice help)"),
    "vi": ("help", "libreoffice-help-vi", "vi", "office-suite documentation (LibreOffice help)"),
    "km": ("help", "libreoffice-help-km", "km", "office-suite documentation (LibreOffice help)"),
    "th": ("mo", "libreoffice-l10n-th", "th", "office-suite UI and tooltips (LibreOffice)"),
    "ta": ("mo", "libreoffice-l10n-ta", "ta", "office-suite UI and tooltips (LibreOffice)"),
    "ms": ("pak", "chromium-l10n", "ms", "browser UI (Chromium): close to the training domain"),
    "tl": ("pak", "chromium-l10n", "fil", "browser UI (Chromium): close to the training domain"),
}
LICENSES = {"libreoffice": "MPL-2.0 (LibreOffice; parts Apache-2.0)", "chromium": "BSD-3-Clause (The Chromium Authors)"}
SENTENCES_PER_LANGUAGE = 300
MIN_CHARS = 30  # sentences, not labels: a kept text has at least this many characters


# ---- readers ---------------------------------------------------------------------------------------------
class _HelpParagraphs(html.parser.HTMLParser):
    """Text of each `<p class="paragraph|listitem">` of a help page, keyed by its id; hidden spans skipped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: dict[str, str] = {}
        self._current: str | None = None
        self._parts: list[str] = []
        self._hidden_depth = 0
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "p" and attrs.get("class") in ("paragraph", "listitem") and attrs.get("id"):
            self._current, self._parts, self._depth, self._hidden_depth = attrs["id"], [], 0, 0
            return
        if self._current is not None and tag != "br":
            self._depth += 1
            if self._hidden_depth or "hidden" in attrs:
                self._hidden_depth += 1

    def handle_endtag(self, tag):
        if self._current is None:
            return
        if tag == "p":
            self.paragraphs[self._current] = "".join(self._parts)
            self._current = None
            return
        self._depth -= 1
        if self._hidden_depth:
            self._hidden_depth -= 1

    def handle_data(self, data):
        if self._current is not None and not self._hidden_depth:
            self._parts.append(data)


def read_help(root: Path, locale: str) -> dict[str, str]:
    """{page/paragraph id: text} of a LibreOffice help package (HTML help)."""
    base = root / "usr/share/libreoffice/help" / locale / "text"
    out: dict[str, str] = {}
    for page in sorted(base.rglob("*.html")):
        parser = _HelpParagraphs()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        key = page.relative_to(base).as_posix()
        for pid, text in parser.paragraphs.items():
            out[f"{key}#{pid}"] = text
    return out


def read_mo(root: Path, locale: str) -> dict[str, str]:
    """{catalog/msgid: translation} of a LibreOffice UI language pack; the msgid is the English source."""
    out: dict[str, str] = {}
    for mo in sorted((root / "usr/lib/libreoffice/program/resource" / locale / "LC_MESSAGES").glob("*.mo")):
        with open(mo, "rb") as handle:
            catalog = gettext.GNUTranslations(handle)._catalog  # noqa: SLF001 (the parsed table)
        for msgid, text in catalog.items():
            if isinstance(msgid, str) and msgid and isinstance(text, str):
                english = msgid.split("\x04")[-1]
                if text.replace("~", "") != english.replace("~", ""):  # untranslated copies dropped
                    out[f"{mo.stem}/{msgid}"] = text.replace("~", "")
    return out


def read_pak(root: Path, locale: str) -> dict[str, str]:
    """{resource id: string} of a Chromium locale .pak (format version 5, UTF-8)."""
    data = (root / "usr/lib/chromium/locales" / f"{locale}.pak").read_bytes()
    version, encoding, count, aliases = struct.unpack_from("<IBxxxHH", data, 0)
    if version != 5:
        raise ValueError(f"{locale}.pak: pak format {version}, expected 5")
    entries = [struct.unpack_from("<HI", data, 12 + 6 * i) for i in range(count + 1)]
    out = {}
    for (rid, start), (_, stop) in zip(entries, entries[1:]):
        try:
            out[str(rid)] = data[start:stop].decode("utf-8" if encoding == 1 else "utf-16-le")
        except UnicodeDecodeError:
            continue
    return out


READERS = {"help": read_help, "mo": read_mo, "pak": read_pak}


# ---- building --------------------------------------------------------------------------------------------
# Untranslated English left in a Latin-script translation (en-GB and en-US spellings differ, so an exact
# comparison with the English package misses some): two or more of these words give it away.
ENGLISH_WORDS = re.compile(r"\b(the|you|and|to|of|is|that|this|with|for|select|click)\b", re.I)


def keep(text: str, language: str) -> str | None:
    text = clean_text(text)
    if len(text) < MIN_CHARS or any(mark in text for mark in ("$", "%", "{", "}", "<", ">", "\\", "[", "]")):
        return None
    if language != "en" and len(ENGLISH_WORDS.findall(text)) >= 2:
        return None
    if language == "vi" and not any(ord(char) > 0x7F for char in text):
        return None  # Vietnamese without a single diacritic is not Vietnamese
    return text if is_language_text(text, language) else None


def _deb_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                          text=True).stdout.strip()


def _find_deb(debs: Path, package: str) -> Path:
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise FileNotFoundError(f"no {package}_*.deb in {debs} (apt-get download {package}, or --download)")
    return found[-1]


def build(out: Path, debs: Path, per_language: int = SENTENCES_PER_LANGUAGE) -> dict:
    """Extract, clean, de-duplicate and sample `per_language` texts per language into OUT/<lang>.jsonl.gz."""
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"sentences_per_language": per_language, "min_chars": MIN_CHARS, "languages": {}}
    with tempfile.TemporaryDirectory() as work:
        extracted: dict[str, Path] = {}
        english_help: set[str] = set()
        for language, (kind, package, locale, domain) in SOURCES.items():
            deb = _find_deb(debs, package)
            if package not in extracted:
                extracted[package] = Path(work) / package
                subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted[package])], check=True)
            texts = READERS[kind](extracted[package], locale)
            if language == "en":
                english_help = {clean_text(t) for t in texts.values()}
            elif kind == "help":  # untranslated paragraphs of a help package are the English text
                texts = {k: t for k, t in texts.items() if clean_text(t) not in english_help}
            seen: set[str] = set()
            records = []
            # A deterministic sample independent of file order: smallest hash of the source key first.
            for key in sorted(texts, key=lambda k: hashlib.sha256(k.encode()).hexdigest()):
                text = keep(texts[key], language)
                if text is None or text in seen:
                    continue
                seen.add(text)
                records.append({"id": f"{package}:{key}", "text": text})
                if len(records) >= per_language:
                    break
            path = out / f"{language}.jsonl.gz"
            write_jsonl_gz(path, records)
            license_name = LICENSES["chromium" if package.startswith("chromium") else "libreoffice"]
            manifest["languages"][language] = {
                "file": path.name, "documents": len(records), "package": package, "version": _deb_version(deb),
                "domain": domain, "license": license_name,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / "PROVENANCE.md").write_text(provenance_markdown(manifest), encoding="utf-8")
    return manifest


def provenance_markdown(manifest: dict) -> str:
    rows = "\n".join(f"| {lang} | {m['documents']} | {m['package']} | {m['version']} | {m['domain']} | {m['license']} |"
                     for lang, m in sorted(manifest["languages"].items()))
    return f"""# Other-domain held-out text: provenance and licenses

Rebuilt by `python -m seallm_jax.data.build_other_domain --out seallm_jax/data/other_domain --download`.
Held-out text only (never trained on): each `<lang>.jsonl.gz` holds one JSON object per line, `id`
(package:source key) and `text`. At most {manifest['sentences_per_language']} texts per language of at least
{manifest['min_chars']} characters, sampled by a hash of the source key; untranslated (English) copies,
texts with placeholders or markup, and duplicates dropped.

LibreOffice's help and translations are by The Document Foundation and the LibreOffice localization
communities, MPL-2.0 (parts Apache-2.0), https://www.libreoffice.org/ and Debian's packages. Chromium's
locale strings are by The Chromium Authors, BSD-3-Clause, https://www.chromium.org/ and Debian's
`chromium-l10n`. No Debian package holds Burmese (my) or Lao (lo) text of this kind.

| language | texts | package | version | domain | license |
|---|---|---|---|---|---|
{rows}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (the package's other_domain/)")
    parser.add_argument("--debs", type=Path, help="folder holding the .deb files")
    parser.add_argument("--download", action="store_true", help="apt-get download the packages first")
    parser.add_argument("--per-language", type=int, default=SENTENCES_PER_LANGUAGE)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        debs = args.debs or Path(tmp)
        if args.download:
            packages = sorted({package for _, package, _, _ in SOURCES.values()})
            subprocess.run(["apt-get", "download", *packages], check=True, cwd=debs)
        elif args.debs is None:
            parser.error("give --debs DIR or --download")
        manifest = build(args.out, debs, args.per_language)
        for source in ("/usr/share/common-licenses/MPL-2.0",):
            if Path(source).exists():
                shutil.copy(source, args.out / "LICENSE-MPL-2.0")
    for language, entry in sorted(manifest["languages"].items()):
        print(f"{language}: {entry['documents']} texts from {entry['package']} {entry['version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

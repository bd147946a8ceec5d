"""The shipped other-domain held-out split loads, is small, and has its provenance recorded."""
import hashlib

from seallm_jax.data.other_domain import OTHER_DOMAIN_DIR, load_other_domain, other_domain_files, other_domain_manifest


def test_other_domain_loads_with_provenance():
    manifest = other_domain_manifest()
    documents = load_other_domain()
    assert {"en", "zh", "id", "vi", "th", "km", "ta"} <= set(documents)
    for language, entry in manifest["languages"].items():
        assert len(documents[language]) == entry["documents"] >= 100
        assert entry["package"] and entry["version"] and entry["license"] and entry["domain"]
        path = OTHER_DOMAIN_DIR / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert all(doc.language == language and len(doc.text) >= manifest["min_chars"] for doc in documents[language])
    total = sum(p.stat().st_size for p in OTHER_DOMAIN_DIR.iterdir())
    assert total < 400_000
    assert "Provenance" in (OTHER_DOMAIN_DIR / "PROVENANCE.md").read_text() or "provenance" in (OTHER_DOMAIN_DIR / "PROVENANCE.md").read_text()


def test_other_domain_files_skips_languages_without_text():
    files = other_domain_files(["th", "my", "lo"])
    assert list(files) == ["th"]

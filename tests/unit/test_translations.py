"""No visible string is left in English on a Chinese page, nor missing from a catalog
(issue 18): the zh_CN catalog has a translation for every message, none fuzzy, its
placeholders agree, it is compiled, and a fresh extraction of the code and templates
finds no msgid that either catalog lacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from babel.messages.frontend import CommandLineInterface
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parents[2]
TR = ROOT / "portal" / "translations"
LOCALES = ("zh_Hans_CN", "en")


def _po(locale: str):
    with open(TR / locale / "LC_MESSAGES" / "messages.po", "rb") as fh:
        return read_po(fh, locale=locale)


def _ident(message) -> str:
    return message.id if isinstance(message.id, str) else message.id[0]


def _strings(message) -> list[str]:
    return [message.string] if isinstance(message.string, str) else list(message.string)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """The msgids of the code and templates now, extracted as scripts/translations.py does
    (into a temporary file, leaving the repository's messages.pot alone)."""
    pot = tmp_path_factory.mktemp("pot") / "messages.pot"
    CommandLineInterface().run(
        ["pybabel", "-q", "extract", "-F", str(ROOT / "babel.cfg"), "-k", "_l", "-k", "N_", "-k",
         "lazy_gettext", "--no-location", "-o", str(pot), str(ROOT)])
    with open(pot, "rb") as fh:
        catalog = read_po(fh)
    ids = {_ident(m) for m in catalog if m.id}
    assert len(ids) > 100, "the extraction found next to nothing: is babel.cfg read?"
    return ids


def test_every_chinese_message_is_translated_and_none_is_fuzzy():
    catalog = _po("zh_Hans_CN")
    empty = [_ident(m) for m in catalog if m.id and not all(_strings(m))]
    fuzzy = [_ident(m) for m in catalog if m.id and m.fuzzy]
    assert not empty, f"untranslated in zh_Hans_CN: {empty}"
    assert not fuzzy, f"fuzzy in zh_Hans_CN: {fuzzy}"


@pytest.mark.parametrize("locale", LOCALES)
def test_placeholders_agree(locale):
    problems = [(_ident(m), [str(e) for e in errors]) for m, errors in _po(locale).check()]
    assert not problems, problems


@pytest.mark.parametrize("locale", LOCALES)
def test_no_extracted_msgid_is_missing_from_the_catalog(extracted, locale):
    have = {_ident(m) for m in _po(locale) if m.id}
    missing = sorted(extracted - have)
    assert not missing, (f"not in the {locale} catalog (run scripts/translations.py): "
                         f"{missing}")


def test_the_compiled_catalog_is_the_po():
    """The .mo the portal reads says what the .po says (compiled after the last edit)."""
    with open(TR / "zh_Hans_CN" / "LC_MESSAGES" / "messages.mo", "rb") as fh:
        compiled = {_ident(m): _strings(m) for m in read_mo(fh) if m.id}
    source = {_ident(m): _strings(m) for m in _po("zh_Hans_CN") if m.id}
    stale = sorted(k for k, v in source.items() if compiled.get(k) != v)
    assert not stale, f"messages.mo is older than messages.po for: {stale[:10]}"

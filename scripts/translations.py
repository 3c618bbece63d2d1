"""Refresh the message catalogs: extract, merge into each .po, fill zh_CN from a dictionary
file if given, and compile the .mo files.

    .venv/bin/python scripts/translations.py [ZH_DICT.py]

The .po files are the source of truth for translations; this script never drops one.
"""

import runpy
import subprocess
import sys
from pathlib import Path

from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
TR = ROOT / "portal" / "translations"
BIN = Path(sys.executable).parent


def main() -> None:
    subprocess.run([BIN / "pybabel", "extract", "-F", "babel.cfg", "-k", "_l", "-k", "N_", "-k",
                    "lazy_gettext", "--no-location", "-o", TR / "messages.pot", "."],
                   cwd=ROOT, check=True, capture_output=True)
    subprocess.run([BIN / "pybabel", "update", "-i", TR / "messages.pot", "-d", TR,
                    "--no-fuzzy-matching"], check=True, capture_output=True)
    if len(sys.argv) > 1:
        zh = runpy.run_path(sys.argv[1])["ZH"]
        po_path = TR / "zh_Hans_CN" / "LC_MESSAGES" / "messages.po"
        with open(po_path, "rb") as fh:
            catalog = read_po(fh, locale="zh_Hans_CN")
        for message in catalog:
            if message.id and message.id in zh:
                message.string = zh[message.id]
        with open(po_path, "wb") as fh:
            write_po(fh, catalog, omit_header=False, width=100)
    subprocess.run([BIN / "pybabel", "compile", "-d", TR, "--use-fuzzy"], check=True,
                   capture_output=True)
    po = (TR / "zh_Hans_CN" / "LC_MESSAGES" / "messages.po").read_text(encoding="utf-8")
    missing = po.count('msgstr ""\n\n') - 1
    print(f"catalogs compiled; zh_CN untranslated entries: {max(0, missing)}")


if __name__ == "__main__":
    main()

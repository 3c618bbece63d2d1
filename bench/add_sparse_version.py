"""Record an already stored object as a new file, without reading it again.

``flask file add`` hashes and copies its input, which for a multi-GiB sparse benchmark file
takes long and fills the disk. bench/run_download_bench.py instead places the sparse object
at its content-addressed path itself (it knows the SHA-256 of N zero bytes) and calls this
to insert the File and FileVersion rows. Run with the same PORTAL_* environment as the portal.

    python bench/add_sparse_version.py --key SHA256 --size N --crc32 C --title T --access login
"""

from __future__ import annotations

import argparse

from portal import create_app
from portal.extensions import db
from portal.models import File, FileVersion


def main(argv: list[str] | None = None) -> None:
    """Insert the rows and print ``<file id>``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--key", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--crc32", type=int, required=True)
    p.add_argument("--title", required=True)
    p.add_argument("--filename", default="big.bin")
    p.add_argument("--access", default="login")
    args = p.parse_args(argv)
    app = create_app()
    with app.app_context():
        file = File(title=args.title, category="bench", access=args.access)
        db.session.add(file)
        db.session.flush()
        db.session.add(FileVersion(
            file=file, number=1, sha256=args.key, crc32=args.crc32, size=args.size,
            mime_type="application/octet-stream", original_filename=args.filename,
            storage_key=args.key))
        db.session.commit()
        print(file.id)


if __name__ == "__main__":
    main()

"""What the wheel carries beyond the ``portal`` package (pyproject.toml holds the rest).

The repository keeps templates/, static/, migrations/ and gunicorn.conf.py at its top level;
a wheel has only its packages, so the build copies them into ``portal/``, where an installed
portal finds them (``portal.bundled``). A checkout and an editable install read them where
they are, so an editable build copies nothing. MANIFEST.in puts them into the sdist.

The wheel also carries ``portal/static-built``: static/ under content-hashed names with gzip
copies (portal/assetbuild.py), which an installed portal serves from the first request on.
"""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: Top-level folders and files of the repository, and where they go in the package.
BUNDLED = ("templates", "static", "migrations", "gunicorn.conf.py")


class BuildWithBundled(build_py):
    """build_py, then the top-level folders and files copied into ``build/.../portal/``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "portal"
        for name in BUNDLED:
            top = Path(name)
            files = [top] if top.is_file() else sorted(
                path for path in top.rglob("*")
                if path.is_file() and "__pycache__" not in path.parts)
            for path in files:
                self.mkpath(str((target / path).parent))
                self.copy_file(str(path), str(target / path))
        assetbuild(Path("portal") / "assetbuild.py").build(Path("static"),
                                                          target / "static-built")


def assetbuild(path: Path):
    """portal/assetbuild.py loaded by itself: importing the package would need Flask, which
    the build environment does not have."""
    spec = importlib.util.spec_from_file_location("portal_assetbuild", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


setup(cmdclass={"build_py": BuildWithBundled})

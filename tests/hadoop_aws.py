"""Spark's S3A connector for the tests: the hadoop-aws jar and the AWS SDK it needs.

A cluster adds them with ``spark-submit --packages org.apache.hadoop:hadoop-aws:VERSION``
from Maven Central, which this machine cannot reach. PyPI can: the ``sagemaker_pyspark``
source distribution carries hadoop-aws 3.3.1 and aws-java-sdk-bundle 1.11.901, which are
downloaded once (``pip download``, ~180 MB) into ~/.cache/portal-tests and the two jars
taken out of it. They are older than the pyspark wheel's Hadoop (3.5): ``OLD_JAR_CONF``
gives the settings that Hadoop 3.5 spells with units ("60s") as plain numbers, which is
all the 3.3 jar needs to read an s3a:// path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers import one_at_a_time

SDIST = "sagemaker_pyspark==1.4.5"
JARS = ("hadoop-aws-3.3.1.jar", "aws-java-sdk-bundle-1.11.901.jar")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "portal-tests" / \
    "hadoop-aws"

#: Hadoop's own defaults (core-default.xml), as numbers in the units hadoop-aws 3.3 reads.
OLD_JAR_CONF = {"spark.hadoop.fs.s3a.threads.keepalivetime": "60",
                "spark.hadoop.fs.s3a.connection.timeout": "200000",
                "spark.hadoop.fs.s3a.connection.establish.timeout": "30000",
                "spark.hadoop.fs.s3a.multipart.purge.age": "86400"}


def jars() -> list[Path]:
    """The two jars, fetched on first use (by one test process at a time)."""
    with one_at_a_time(CACHE.with_name(CACHE.name + ".lock")):
        return _fetched_jars()


def _fetched_jars() -> list[Path]:
    found = [CACHE / name for name in JARS]
    if all(path.is_file() for path in found):
        return found
    CACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                           "-q", "-d", str(CACHE), SDIST],
                          capture_output=True, text=True, timeout=900)
    archives = sorted(CACHE.glob("sagemaker_pyspark-*.tar.gz"))
    if done.returncode != 0 or not archives:
        pytest.fail(f"cannot fetch {SDIST} from PyPI for the hadoop-aws jar: "
                    f"{done.stderr[-1500:]}")
    with tarfile.open(archives[0]) as archive:
        for member in archive.getmembers():
            name = Path(member.name).name
            if name in JARS:
                member.name = name
                archive.extract(member, CACHE, filter="data")
    missing = [path.name for path in found if not path.is_file()]
    if missing:
        pytest.fail(f"{archives[0].name} holds no {', '.join(missing)}")
    archives[0].unlink()
    return found

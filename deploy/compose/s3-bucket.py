"""compose.yaml's one-shot ``s3-bucket``: create the bucket of PORTAL_STORAGE_URL
(``s3://BUCKET/PREFIX``) when the S3 server does not have it yet, so the portal finds it at
its first start (it never creates one itself). Waits up to two minutes for the server, which
may still be starting; with a file:// storage there is nothing to do."""

import sys
import time
import urllib.parse

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from portal.settings import from_environ
from portal.storage.s3 import client_config

url = urllib.parse.urlsplit(from_environ().storage_url or "")
if url.scheme != "s3":
    sys.exit(0)
client = boto3.session.Session().client("s3", config=client_config())
deadline = time.monotonic() + 120
while True:
    try:
        client.head_bucket(Bucket=url.netloc)
        print(f"s3-bucket: {url.netloc} is there")
        break
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise
        client.create_bucket(Bucket=url.netloc)
        print(f"s3-bucket: created {url.netloc}")
        break
    except BotoCoreError as exc:  # not answering yet
        if time.monotonic() > deadline:
            sys.exit(f"s3-bucket: the S3 server did not answer within 120 s: {exc}")
        time.sleep(1)

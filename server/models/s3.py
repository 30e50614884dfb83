"""Amazon S3 (and S3-compatible stores: MinIO, Ceph, moto) as a model repository's object store.

Credentials and region come from boto3's standard chain: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws``, web identity (EKS IRSA), the container and instance
metadata services. ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) points at an S3-compatible server. Nothing
here logs or reports a credential: messages name the ``s3://bucket/prefix`` and the store's error code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tensorgate.server.config import S3_SCHEME, parse_s3_url
from tensorgate.server.models.mirror import RepositoryUnavailable, StoredObject


class S3Store:
    """One bucket and prefix, read with boto3."""

    def __init__(self, url: str) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.location = f"{S3_SCHEME}{self.bucket}/{self.prefix}".rstrip("/")
        # Retries with backoff for throttling and transient errors; a poll that still fails is retried next time.
        self._client: Any = boto3.session.Session().client("s3", config=Config(retries={"mode": "standard"}))

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def list(self) -> list[StoredObject]:
        start = f"{self.prefix}/" if self.prefix else ""
        objects = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", []):
                    objects.append(StoredObject(item["Key"][len(start) :], item["Size"], item.get("ETag", "")))
        except (BotoCoreError, ClientError) as exc:
            raise RepositoryUnavailable(f"cannot list model repository {self.location}: {_reason(exc)}") from None
        return objects

    def download(self, key: str, destination: Path) -> None:
        try:
            self._client.download_file(self.bucket, self._key(key), str(destination))
        except (BotoCoreError, ClientError) as exc:
            raise RepositoryUnavailable(
                f"cannot read {key!r} of model repository {self.location}: {_reason(exc)}"
            ) from None


def _reason(exc: BotoCoreError | ClientError) -> str:
    """The store's error code and message (never the request's headers or signature)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return str(exc)

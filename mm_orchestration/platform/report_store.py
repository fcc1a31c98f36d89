"""Where compliance reports live: a local folder by default, S3-compatible storage when
`s3_bucket` is set (credentials from the usual AWS_* environment variables).

Reports are written once per week and read back for the email and the download
endpoint, which refuses any path outside the store and any file whose SHA-256 no
longer matches the one recorded in `ops.residency_reports`.

Inside the store a report has a key (`residency/2026-11-23/x.csv`); outside it, in the
database and the email, an absolute URI that names the store too: `file:///...` for
the folder, `s3://bucket/prefix/key` for S3 (`uri`, and back with `key_for`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from urllib.request import url2pathname

from dagster import ConfigurableResource
from pydantic import Field

from mm_orchestration.platform.config_models import QUIET
from mm_orchestration.platform.settings import DEFAULTS, Settings, SettingsError


class ReportStoreError(ValueError):
    """A path outside the store, or a report that is missing or altered."""


class ReportStoreUnavailable(SettingsError):
    """S3 could not be reached, or refused the credentials or the bucket: a setting to fix
    (named in the message, never a secret), not a missing report."""


# S3's answers that say the store itself refuses us (credentials, permissions, the bucket),
# as opposed to a key that is not there.
_REFUSALS = frozenset(
    {
        "AccessDenied", "AllAccessDisabled", "ExpiredToken", "InvalidAccessKeyId",
        "InvalidBucketName", "InvalidToken", "NoSuchBucket", "SignatureDoesNotMatch",
        "TokenRefreshRequired", "UnauthorizedAccess", "403",
    }
)  # fmt: skip


# What stays as it is in an s3:// URI's path: RFC 3986's unreserved and sub-delims, '/'.
_S3_SAFE = "/-._~!$&'()*+,;=:@"


def is_uri(value: str) -> bool:
    """True for an absolute URI (`file:///...`, `s3://...`), False for a store key."""
    return "://" in value and bool(urlsplit(value).scheme)


class ReportStore(ConfigurableResource):
    """A folder (or S3 prefix) of reports, addressed inside by relative keys such as
    `residency/2026-11-23/x.csv` and outside by absolute URIs (`uri`)."""

    model_config = QUIET  # a refused field's value never shows in pydantic's error

    root: str = Field(default=".mm/reports", description="MM_DATA_DIR/reports unless set")
    s3_bucket: str = Field(default="", description="MM_REPORTS_S3_BUCKET: store in S3 instead")
    s3_prefix: str = Field(default="reports", description="MM_REPORTS_S3_PREFIX")
    s3_endpoint_url: str = Field(
        default="", description="MM_REPORTS_S3_ENDPOINT: for S3-compatible services"
    )
    s3_region: str = Field(default="ap-southeast-2", description="MM_REPORTS_S3_REGION")
    http_connect_timeout: float = Field(
        default=DEFAULTS.http_connect_timeout, gt=0, description="MM_HTTP_CONNECT_TIMEOUT"
    )
    http_read_timeout: float = Field(
        default=DEFAULTS.http_read_timeout, gt=0, description="MM_HTTP_READ_TIMEOUT"
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> ReportStore:
        """The store the settings name: S3 when MM_REPORTS_S3_BUCKET is set, else a folder."""
        return cls(
            root=os.path.join(settings.data_dir, "reports"),
            s3_bucket=settings.reports_s3_bucket,
            s3_prefix=settings.reports_s3_prefix,
            s3_endpoint_url=settings.reports_s3_endpoint,
            s3_region=settings.reports_s3_region,
            http_connect_timeout=settings.http_connect_timeout,
            http_read_timeout=settings.http_read_timeout,
        )

    @property
    def uses_s3(self) -> bool:
        return bool(self.s3_bucket)

    def _s3(self) -> Any:
        import boto3
        from botocore.config import Config

        # botocore's defaults are 60 s each; ours bound a stalled store like every other
        # provider. Its own retries stay on: a PUT of the same key is idempotent.
        return boto3.client(
            "s3",
            region_name=self.s3_region,
            endpoint_url=self.s3_endpoint_url or None,
            config=Config(
                connect_timeout=self.http_connect_timeout,
                read_timeout=self.http_read_timeout,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )

    @contextlib.contextmanager
    def _s3_reachable(self) -> Iterator[None]:
        """Turn S3 not answering, or refusing the credentials or the bucket, into
        ReportStoreUnavailable naming the settings to check; a missing key stays botocore's
        ClientError for the caller to read."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"s3://{self.s3_bucket} (MM_REPORTS_S3_BUCKET"
        where += (
            f", at MM_REPORTS_S3_ENDPOINT {self.s3_endpoint_url})" if self.s3_endpoint_url else ")"
        )
        try:
            yield
        except NoCredentialsError:
            raise ReportStoreUnavailable(
                f"the report store {where} has no credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or a role or profile boto3 finds)"
            ) from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in _REFUSALS:
                raise
            raise ReportStoreUnavailable(
                f"the report store {where} refused the request ({code}): check the bucket's "
                "name and that the AWS credentials (AWS_ACCESS_KEY_ID, not shown) may read "
                "and write it"
            ) from None
        except BotoCoreError as exc:  # no answer: the endpoint, the network, a timeout
            raise ReportStoreUnavailable(
                f"the report store {where} cannot be reached ({type(exc).__name__}): check "
                "the endpoint and the network"
            ) from None

    def _object_key(self, key: str) -> str:
        clean = posixpath.normpath(key)
        if clean.startswith(("..", "/")) or clean == ".":
            raise ReportStoreError(f"{key!r} is outside the report store")
        return f"{self.s3_prefix.strip('/')}/{clean}" if self.s3_prefix else clean

    def path(self, key: str) -> Path:
        base = Path(self.root).resolve()
        target = (base / key).resolve()
        if base != target and base not in target.parents:
            raise ReportStoreError(f"{key!r} is outside the report store")
        return target

    def put(self, key: str, content: bytes) -> str:
        """Store `content` under `key`; returns its SHA-256 (hex)."""
        digest = hashlib.sha256(content).hexdigest()
        if self.uses_s3:
            with self._s3_reachable():
                self._s3().put_object(
                    Bucket=self.s3_bucket,
                    Key=self._object_key(key),
                    Body=content,
                    Metadata={"sha256": digest},
                )
            return digest
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".partial")
        partial.write_bytes(content)
        partial.replace(target)  # readers never see half a report
        return digest

    def get(self, key: str, sha256: str | None = None) -> bytes:
        """The stored bytes; with `sha256`, only if they still hash to it."""
        if self.uses_s3:
            from botocore.exceptions import ClientError

            try:
                with self._s3_reachable():
                    reply = self._s3().get_object(Bucket=self.s3_bucket, Key=self._object_key(key))
                    content = reply["Body"].read()
            except ClientError as exc:
                raise ReportStoreError(f"no report at {key!r}: {exc}") from None
        else:
            target = self.path(key)
            if not target.is_file():
                raise ReportStoreError(f"no report at {key!r}")
            content = target.read_bytes()
        if sha256 is not None and hashlib.sha256(content).hexdigest() != sha256:
            raise ReportStoreError(f"{key!r} no longer matches its recorded SHA-256")
        return content

    def check_key(self, key: str) -> None:
        """Refuse a key that would leave the store."""
        if self.uses_s3:
            self._object_key(key)
        else:
            self.path(key)

    def uri(self, key: str) -> str:
        """The absolute URI of `key`: what `ops.residency_reports` and the email record."""
        if self.uses_s3:
            # Percent-encoded like a file URI: a prefix holding '#', '?' or a space must not
            # turn into a fragment, a query or a broken URI.
            return f"s3://{self.s3_bucket}/{quote(self._object_key(key), safe=_S3_SAFE)}"
        return self.path(key).as_uri()

    @property
    def location(self) -> str:
        """Where this store keeps reports, as a URI (for messages)."""
        if self.uses_s3:
            prefix = self.s3_prefix.strip("/")
            return f"s3://{self.s3_bucket}/{prefix + '/' if prefix else ''}"
        return Path(self.root).resolve().as_uri() + "/"

    def key_for(self, uri: str) -> str:
        """The key of the report at `uri`; refuses a URI that names another store."""
        parts = urlsplit(uri)
        elsewhere = ReportStoreError(f"{uri!r} is not in this report store ({self.location})")
        if self.uses_s3:
            if parts.scheme != "s3" or parts.netloc != self.s3_bucket:
                raise elsewhere
            object_key = unquote(parts.path[1:])
            prefix = self.s3_prefix.strip("/")
            if prefix:
                if not object_key.startswith(prefix + "/"):
                    raise elsewhere
                object_key = object_key[len(prefix) + 1 :]
            key = object_key
        else:
            if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
                raise elsewhere
            try:
                relative = Path(url2pathname(parts.path)).relative_to(Path(self.root).resolve())
            except ValueError:
                raise elsewhere from None
            key = relative.as_posix()
        try:
            canonical = self.uri(key)
        except ReportStoreError:
            raise elsewhere from None
        if parts.query or parts.fragment or canonical != uri:
            raise elsewhere  # only the store's own spelling of a URI: no `..`, no extras
        return key

    def get_uri(self, uri: str, sha256: str | None = None) -> bytes:
        """The bytes of the report at `uri` (one of this store's); see `get`."""
        return self.get(self.key_for(uri), sha256)

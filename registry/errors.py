"""Domain errors: what went wrong in registry terms, no HTTP (``problems.py`` maps them)."""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    """Base of every domain error; ``code`` names its problem type."""

    code = "registry-error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.extra = extra


class Unauthenticated(RegistryError):
    """No valid API key (401)."""

    code = "unauthenticated"


class Forbidden(RegistryError):
    """A valid key without the scope or model reach the call needs (403)."""

    code = "forbidden"


class BadRequest(RegistryError):
    code = "bad-request"


class NotFound(RegistryError):
    code = "not-found"


class Conflict(RegistryError):
    code = "conflict"


class TooLarge(RegistryError):
    code = "upload-too-large"


class PreconditionFailed(RegistryError):
    """An ``If-Match`` / ``If-None-Match`` condition did not hold (optimistic concurrency)."""

    code = "precondition-failed"


class InvalidPath(BadRequest):
    code = "invalid-path"


class InvalidSelector(BadRequest):
    code = "invalid-version-selector"


class InvalidCursor(BadRequest):
    code = "invalid-cursor"


class ContentMismatch(BadRequest):
    code = "content-mismatch"


class ModelNotFound(NotFound):
    code = "model-not-found"

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} does not exist")


class VersionNotFound(NotFound):
    code = "version-not-found"

    def __init__(self, model: str, selector: str) -> None:
        super().__init__(f"model {model!r} has no version {selector}")


class FileNotFound(NotFound):
    code = "file-not-found"

    def __init__(self, model: str, version: int, path: str) -> None:
        super().__init__(f"version {version} of model {model!r} has no file {path!r}")


class BlobMissing(NotFound):
    code = "file-not-uploaded"

    def __init__(self, path: str) -> None:
        super().__init__(f"the bytes of {path!r} have not been uploaded yet")


class AliasNotFound(NotFound):
    code = "alias-not-found"

    def __init__(self, model: str, alias: str) -> None:
        super().__init__(f"model {model!r} has no alias {alias!r}")


class ModelAlreadyExists(Conflict):
    code = "model-already-exists"

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} already exists")


class ModelHasAliases(Conflict):
    code = "model-has-aliases"

    def __init__(self, model: str, aliases: list[str]) -> None:
        super().__init__(
            f"model {model!r} still has aliases {aliases}; delete them first", aliases=aliases
        )


class VersionImmutable(Conflict):
    code = "version-immutable"

    def __init__(self, model: str, version: int, status: str, what: str) -> None:
        super().__init__(f"version {version} of model {model!r} is {status}: {what}")


class VersionNotReady(Conflict):
    code = "version-not-ready"

    def __init__(self, model: str, version: int, status: str) -> None:
        super().__init__(f"version {version} of model {model!r} is {status}, not ready")


class VersionAliased(Conflict):
    code = "version-has-aliases"

    def __init__(self, model: str, version: int, aliases: list[str]) -> None:
        super().__init__(
            f"version {version} of model {model!r} is pointed at by aliases {aliases}",
            aliases=aliases,
        )


class FilesMissing(Conflict):
    code = "files-missing"

    def __init__(self, model: str, version: int, missing: list[str]) -> None:
        super().__init__(
            f"version {version} of model {model!r} cannot be finalized: "
            f"{len(missing)} file(s) not uploaded",
            missing=missing,
        )


class NoPreviousTarget(Conflict):
    code = "alias-has-no-history"

    def __init__(self, model: str, alias: str) -> None:
        super().__init__(f"alias {alias!r} of model {model!r} has no previous version")


class DirectUploadUnsupported(Conflict):
    code = "direct-upload-unsupported"

    def __init__(self) -> None:
        super().__init__(
            "this registry's store does not offer direct multipart uploads; "
            "upload the file with PUT …/files/{path} instead"
        )


class PartsMissing(Conflict):
    code = "parts-missing"

    def __init__(self, expected: int, uploaded: list[int]) -> None:
        super().__init__(f"expected {expected} parts, {len(uploaded)} uploaded", uploaded=uploaded)


class NoUploadInProgress(Conflict):
    code = "no-upload-in-progress"

    def __init__(self, path: str) -> None:
        super().__init__(f"no multipart upload was started for {path!r}")


class UnsupportedMediaType(RegistryError):
    code = "unsupported-media-type"


class Unprocessable(RegistryError):
    code = "invalid-settings"


class InvalidPipeline(Unprocessable):
    code = "invalid-pipeline"


class UnknownFormat(Unprocessable):
    """A version's `format` no table or installed runtime knows; `known` lists those that are."""

    code = "unknown-format"


class InvalidLayout(Unprocessable):
    """A version's files cannot make its format (or hold a pickled Python object)."""

    code = "invalid-artifact-layout"


class DeploymentNotFound(NotFound):
    code = "deployment-not-found"

    def __init__(self, name: str) -> None:
        super().__init__(f"deployment {name!r} does not exist")


class DeploymentAlreadyExists(Conflict):
    code = "deployment-already-exists"

    def __init__(self, name: str) -> None:
        super().__init__(f"deployment {name!r} already exists")


class RevisionNotFound(NotFound):
    code = "revision-not-found"

    def __init__(self, name: str, revision: int) -> None:
        super().__init__(f"deployment {name!r} has no revision {revision}")


class NoPreviousRevision(Conflict):
    code = "deployment-has-no-history"

    def __init__(self, name: str) -> None:
        super().__init__(f"deployment {name!r} has no previous revision")


class DeploymentDeleting(Conflict):
    code = "deployment-deleting"

    def __init__(self, name: str) -> None:
        super().__init__(f"deployment {name!r} is being deleted")


class WorkerNotFound(NotFound):
    code = "worker-not-found"

    def __init__(self, worker: str) -> None:
        super().__init__(f"worker {worker!r} is not registered (or its lease lapsed)")


class ReplicaNotFound(NotFound):
    code = "replica-not-found"

    def __init__(self, replica: str) -> None:
        super().__init__(f"replica {replica!r} does not exist")


class EndpointNotFound(NotFound):
    code = "endpoint-not-found"

    def __init__(self, endpoint: str) -> None:
        super().__init__(f"endpoint {endpoint!r} is not registered")


class KeyNotFound(NotFound):
    code = "key-not-found"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key {key_id!r}")


class AliasChanged(PreconditionFailed):
    def __init__(self, model: str, alias: str, condition: str, etag: str | None) -> None:
        now = f"its ETag is now {etag}" if etag is not None else "it does not exist"
        super().__init__(
            f"alias {alias!r} of model {model!r} does not satisfy {condition}: {now}", etag=etag
        )


class WebhookNotFound(NotFound):
    code = "webhook-not-found"

    def __init__(self, webhook: str) -> None:
        super().__init__(f"webhook {webhook!r} does not exist")


class UnusableVersions(Unprocessable):
    """Versions a body's ``traffic`` or ``shadow`` names that cannot serve (unknown, not ready)."""

    code = "unusable-versions"

    def __init__(self, model: str, what: str, versions: list[str]) -> None:
        super().__init__(
            f"{what} names versions of model {model!r} that cannot serve: {', '.join(versions)}",
            versions=versions,
        )


class TrafficRefused(Unprocessable):
    """A split, shadow or canary that makes no sense for this deployment now (422)."""

    code = "invalid-traffic"


class CanaryInProgress(Conflict):
    code = "canary-in-progress"

    def __init__(self, name: str, revision: int, state: str) -> None:
        super().__init__(
            f"deployment {name!r} has a canary {state} (revision {revision}): promote or abort "
            "it first",
            revision=revision,
        )


class NoCanary(Conflict):
    code = "no-canary"

    def __init__(self, name: str) -> None:
        super().__init__(f"deployment {name!r} has no canary waiting or running")

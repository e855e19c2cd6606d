"""What a service needs to run a use case, built per request by ``registry/deps.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from registry.db import SessionFactory
from registry.metrics import ControlPlaneMetrics
from registry.principal import ANONYMOUS, Principal
from registry.repositories.events import Actor
from registry.settings import Settings
from storage.base import ArtifactStore, DirectUploadStore

MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload


@dataclass(frozen=True)
class Context:
    """The database, the store, the settings, who is acting (for the audit log) and with
    which key, and where to count."""

    sessions: SessionFactory
    store: ArtifactStore
    settings: Settings
    actor: Actor
    principal: Principal = ANONYMOUS  # the caller's key (every scope when auth is off)
    metrics: ControlPlaneMetrics | None = None

    @property
    def direct(self) -> DirectUploadStore | None:
        return self.store if isinstance(self.store, DirectUploadStore) else None

    def part_size(self, size: int) -> int:
        """The settings' part size, grown so no file needs more than S3's 10,000 parts."""
        return max(self.settings.multipart_part_size, math.ceil(size / MAX_PARTS))

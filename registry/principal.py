"""Who is calling: the API key behind a request, its scopes and the models it may reach.

``registry/authentication.py`` puts it in the request's ASGI scope; ``principal_of`` reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from starlette.types import Scope as AsgiScope

from contract.schemas import Scope

PRINCIPAL = "modelplane.principal"  # the ASGI scope key
REFUSED_KEY = "modelplane.refused_key"  # scope key: a known key refused (revoked, expired)

# Scopes that carry others with them; `worker` carries nothing (and nothing carries it but
# `admin`): a worker key can do exactly what workers and serving processes need.
IMPLIED: dict[Scope, frozenset[Scope]] = {
    Scope.admin: frozenset(Scope),
    Scope.write: frozenset({Scope.write, Scope.read}),
    Scope.deploy: frozenset({Scope.deploy, Scope.read}),
    Scope.promote: frozenset({Scope.promote, Scope.read}),
    Scope.read: frozenset({Scope.read}),
    Scope.worker: frozenset({Scope.worker}),
    Scope.gateway: frozenset({Scope.gateway}),
}


def effective(scopes: Iterable[Scope | str]) -> frozenset[Scope]:
    return frozenset().union(*(IMPLIED[Scope(s)] for s in scopes))


@dataclass(frozen=True)
class Principal:
    """The caller. ``key_id`` is ``None`` only when authentication is off (``ANONYMOUS``)."""

    key_id: str | None
    name: str
    scopes: frozenset[Scope]  # effective: implied scopes included
    model_globs: tuple[str, ...] = ()

    def has(self, *any_of: Scope) -> bool:
        return any(s in self.scopes for s in any_of)

    def reaches(self, model: str) -> bool:
        """Whether the key may touch this model (no globs: every model)."""
        return not self.model_globs or any(fnmatchcase(model, g) for g in self.model_globs)

    @property
    def restricted(self) -> bool:
        return bool(self.model_globs)


ANONYMOUS = Principal(key_id=None, name="anonymous", scopes=frozenset(Scope))


def principal_of(scope: AsgiScope) -> Principal:
    """The caller; ``ANONYMOUS`` (every scope) when authentication is off."""
    principal = scope.get(PRINCIPAL)
    return principal if isinstance(principal, Principal) else ANONYMOUS

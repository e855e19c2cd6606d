"""Aliases: movable names for versions, with history and rollback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract.schemas import AliasMove, AliasOut, Page, Scope
from registry.db import reading
from registry.errors import (
    AliasChanged,
    AliasNotFound,
    Forbidden,
    NoPreviousTarget,
    VersionNotFound,
    VersionNotReady,
)
from registry.repositories.aliases import AliasRepository
from registry.repositories.base import decode_cursor
from registry.repositories.events import EventRepository
from registry.repositories.models import ModelRepository
from registry.repositories.versions import VersionRepository
from registry.services.context import Context
from registry.services.deployments import Changed, follow_alias, ignore
from registry.services.paging import to_page
from registry.tables import AliasHistoryRow


def _alias_out(model: str, row: Any) -> AliasOut:
    return AliasOut(
        model=model,
        alias=row.name,
        version=row.version,
        updated_at=row.updated_at,
        protected=row.protected,
    )


def _may_touch_protected(ctx: Context, model: str, alias: str, what: str) -> None:
    if not ctx.principal.has(Scope.promote):  # admin implies promote
        raise Forbidden(
            f"alias {alias!r} of model {model!r} is protected: {what} needs the promote or "
            f"admin scope (key {ctx.principal.name!r} has neither)"
        )


def _move_out(model: str, row: AliasHistoryRow) -> AliasMove:
    return AliasMove(
        model=model,
        alias=row.alias,
        from_version=row.from_version,
        to_version=row.to_version,
        actor=row.actor,
        moved_at=row.moved_at,
    )


@dataclass(frozen=True)
class TaggedAlias:
    """An alias and its entity tag (``ETag``): a new one on every move, never reused."""

    alias: AliasOut
    etag: str


@dataclass(frozen=True)
class Preconditions:
    """``If-Match`` / ``If-None-Match`` as the client sent them (``None``: absent). Checked
    under the model's row lock, so a check and the move it guards cannot interleave with
    another move."""

    if_match: str | None = None
    if_none_match: str | None = None

    def check(self, model: str, alias: str, etag: str | None) -> None:
        if self.if_match is not None and not _matches(self.if_match, etag):
            raise AliasChanged(model, alias, f"If-Match: {self.if_match}", etag)
        if self.if_none_match is not None and _matches(self.if_none_match, etag):
            raise AliasChanged(model, alias, f"If-None-Match: {self.if_none_match}", etag)


ANY = Preconditions()


@dataclass(frozen=True)
class MovedAlias:
    """An alias after a move, and the deployments following it that the move changed
    (a new revision, a canary started or ended): tell the route feed once committed."""

    alias: AliasOut
    deployments: list[str] = field(default_factory=list)


def _matches(header: str, etag: str | None) -> bool:
    """RFC 9110 strong comparison: ``*`` matches an existing alias, else one of the listed
    tags must equal its ETag (weak ``W/`` tags never match)."""
    if etag is None:
        return False
    tags = {tag.strip() for tag in header.split(",")}
    return "*" in tags or etag in tags


async def alias_etag(session: Any, model_id: int, alias: str) -> str | None:
    """The alias's ETag, ``None`` when absent: its newest history row's id (a new one on
    every move), and ``p`` while it is protected."""
    aliases = AliasRepository(session)
    if (row := await aliases.find(model_id, alias)) is None:
        return None
    mark = "p" if row.protected else ""
    return f'"{await aliases.last_move(model_id, alias)}{mark}"'


async def move_alias(
    ctx: Context,
    session: Any,
    model: str,
    model_id: int,
    alias: str,
    version: int,
    action: str,
    *,
    protected: bool | None = None,
) -> MovedAlias:
    """Point ``alias`` at ready ``version`` inside the caller's transaction, with history.
    A protected alias moves only for a key with `promote` (or `admin`); ``protected`` not
    ``None`` (un)marks it, which needs the same."""
    aliases = AliasRepository(session)
    current = await aliases.find(model_id, alias, lock=True)
    was_protected = bool(current is not None and current.protected)
    if was_protected:
        _may_touch_protected(ctx, model, alias, "moving it")
    if protected is not None and protected != was_protected:
        _may_touch_protected(ctx, model, alias, "changing its protection")
    target = await VersionRepository(session).find_by_number(model_id, version)
    if target is None:
        raise VersionNotFound(model, str(version))
    if target.status != "ready":
        raise VersionNotReady(model, version, target.status)
    before = current.version if current is not None else None
    if before != version:  # a move to where it points already changes nothing, ETag included
        await aliases.point(model_id, alias, target.id)
    if protected is not None and protected != was_protected:
        row = await aliases.find(model_id, alias)
        await aliases.set_protected(row.id, protected)
        await EventRepository(session).add(
            ctx.actor,
            "alias.protected" if protected else "alias.unprotected",
            model=model,
            target=f"alias:{alias}",
            before={"protected": was_protected},
            after={"protected": protected},
        )
    changed: list[str] = []
    if before != version:
        await aliases.record_move(model_id, alias, before, version, ctx.actor.name)
        await EventRepository(session).add(
            ctx.actor, action, model=model, target=f"alias:{alias}", before=before, after=version
        )
        # deployments following the alias roll out in the same transaction as the move
        changed = await follow_alias(
            ctx, session, model, model_id, alias, version, rollback=action == "alias.rolled_back"
        )
    return MovedAlias(_alias_out(model, await aliases.find(model_id, alias)), changed)


def tell_moved(changed: Changed, deployments: list[str]) -> None:
    """After an alias move's commit, the deployments it changed: the route feed then
    recomputes at once (a canary's lane, a rollout's revision), not on its next poll."""
    for name in deployments:
        changed(name)


async def _tagged(session: Any, model_id: int, out: AliasOut) -> TaggedAlias:
    etag = await alias_etag(session, model_id, out.alias)
    assert etag is not None
    return TaggedAlias(out, etag)


class AliasService:
    def __init__(self, ctx: Context, changed: Changed = ignore) -> None:
        self._ctx = ctx
        self._sessions = ctx.sessions
        self._changed = changed  # told (after commit) which deployments a move changed

    async def set_alias(
        self,
        model: str,
        alias: str,
        *,
        version: int,
        protected: bool | None = None,
        conditions: Preconditions = ANY,
    ) -> TaggedAlias:
        """Point ``alias`` at a ready version; the move lands in history and the audit log."""
        async with self._sessions.begin() as session:
            model_id = (await ModelRepository(session).get(model, lock=True)).id
            conditions.check(model, alias, await alias_etag(session, model_id, alias))
            moved = await move_alias(
                self._ctx,
                session,
                model,
                model_id,
                alias,
                version,
                "alias.moved",
                protected=protected,
            )
            tagged = await _tagged(session, model_id, moved.alias)
        tell_moved(self._changed, moved.deployments)
        return tagged

    async def rollback_alias(
        self, model: str, alias: str, *, conditions: Preconditions = ANY
    ) -> TaggedAlias:
        """Move the alias back to the version it pointed at before its last move."""
        async with self._sessions.begin() as session:
            model_id = (await ModelRepository(session).get(model, lock=True)).id
            aliases = AliasRepository(session)
            if (current := await aliases.find(model_id, alias, lock=True)) is None:
                raise AliasNotFound(model, alias)
            conditions.check(model, alias, await alias_etag(session, model_id, alias))
            if current.protected:
                _may_touch_protected(self._ctx, model, alias, "rolling it back")
            last = await aliases.history(model_id, alias, before=None, limit=1)
            if not last or last[0].from_version is None:
                raise NoPreviousTarget(model, alias)
            moved = await move_alias(
                self._ctx,
                session,
                model,
                model_id,
                alias,
                last[0].from_version,
                "alias.rolled_back",
            )
            tagged = await _tagged(session, model_id, moved.alias)
        tell_moved(self._changed, moved.deployments)
        return tagged

    async def get_alias(self, model: str, alias: str) -> TaggedAlias:
        async with reading(self._sessions) as session:
            model_id = await ModelRepository(session).get_id(model)
            if (row := await AliasRepository(session).find(model_id, alias)) is None:
                raise AliasNotFound(model, alias)
            return await _tagged(session, model_id, _alias_out(model, row))

    async def list_aliases(self, model: str, *, cursor: str | None, limit: int) -> Page[AliasOut]:
        after = decode_cursor(cursor, str)
        async with reading(self._sessions) as session:
            model_id = await ModelRepository(session).get_id(model)
            rows = await AliasRepository(session).search(model_id, after=after, limit=limit + 1)
            return to_page(rows, limit, lambda r: r.name, lambda r: _alias_out(model, r))

    async def delete_alias(
        self, model: str, alias: str, *, conditions: Preconditions = ANY
    ) -> None:
        async with self._sessions.begin() as session:
            model_id = (await ModelRepository(session).get(model, lock=True)).id
            aliases = AliasRepository(session)
            if (row := await aliases.find(model_id, alias, lock=True)) is None:
                raise AliasNotFound(model, alias)
            conditions.check(model, alias, await alias_etag(session, model_id, alias))
            if row.protected:
                _may_touch_protected(self._ctx, model, alias, "deleting it")
            await aliases.delete(row.id)
            await aliases.record_move(model_id, alias, row.version, None, self._ctx.actor.name)
            await EventRepository(session).add(
                self._ctx.actor,
                "alias.deleted",
                model=model,
                target=f"alias:{alias}",
                before=row.version,
            )

    async def alias_history(
        self, model: str, alias: str, *, cursor: str | None, limit: int
    ) -> Page[AliasMove]:
        """Every move of the alias, newest first (deleted aliases keep their history)."""
        before = decode_cursor(cursor, int)
        async with reading(self._sessions) as session:
            model_id = await ModelRepository(session).get_id(model)
            rows = await AliasRepository(session).history(
                model_id, alias, before=before, limit=limit + 1
            )
            return to_page(rows, limit, lambda r: r.id, lambda r: _move_out(model, r))

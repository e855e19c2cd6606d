"""``/webhooks``: subscriptions to events, and each one's delivery log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from contract.schemas import DeliveryOut, Page, WebhookCreate, WebhookCreated, WebhookOut
from registry.deps import Cursor, Limit, WebhookDep
from registry.problems import problem_responses

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

WebhookId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="the webhook's id")]


@router.post(
    "",
    summary="Subscribe to events",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(422),
)
async def create_webhook(body: WebhookCreate, webhooks: WebhookDep) -> WebhookCreated:
    """Events of the chosen types are POSTed to `url` as JSON, signed: the header
    `Modelplane-Signature: t=<unix seconds>,v1=<hex>` carries HMAC-SHA256 with the secret
    over `<t>.<body>`. The secret is in this answer only. Failed deliveries are retried with
    exponential backoff; `GET /webhooks/{id}/deliveries` shows each one."""
    return await webhooks.create_webhook(body)


@router.get("", summary="List webhooks", responses=problem_responses(400, 422))
async def list_webhooks(
    webhooks: WebhookDep, limit: Limit = 100, cursor: Cursor = None
) -> Page[WebhookOut]:
    """Every subscription (secrets are never shown again)."""
    return await webhooks.list_webhooks(cursor=cursor, limit=limit)


@router.get("/{webhook_id}", summary="Get a webhook", responses=problem_responses(404, 422))
async def get_webhook(webhook_id: WebhookId, webhooks: WebhookDep) -> WebhookOut:
    """One subscription."""
    return await webhooks.get_webhook(webhook_id)


@router.delete(
    "/{webhook_id}",
    summary="Delete a webhook",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404, 422),
)
async def delete_webhook(webhook_id: WebhookId, webhooks: WebhookDep) -> Response:
    """The subscription and its delivery log go; pending deliveries are not sent."""
    await webhooks.delete_webhook(webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{webhook_id}/deliveries",
    summary="List a webhook's deliveries",
    responses=problem_responses(400, 404, 422),
)
async def list_deliveries(
    webhook_id: WebhookId, webhooks: WebhookDep, limit: Limit = 100, cursor: Cursor = None
) -> Page[DeliveryOut]:
    """Newest first: the event, its payload, attempts so far, the last answer's status
    code or error, and when the next attempt is due (pending) or it was delivered."""
    return await webhooks.list_deliveries(webhook_id, cursor=cursor, limit=limit)

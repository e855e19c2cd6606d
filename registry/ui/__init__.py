"""The admin dashboard at ``/ui``: page shells whose JavaScript reads and changes state
through the REST API (``/api/v1``) with the user's own API key, so the dashboard can do
nothing the key could not do with curl."""

from registry.ui.app import create_ui

__all__ = ["create_ui"]

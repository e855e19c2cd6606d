"""The data plane: the stable URL ``/serve/{deployment}/...``, routing each call by a route
table it is told (fixed splits, canaries, version pins, shadows), counting what it saw per
revision, and checking API keys from an in-memory cache. Knows nothing of the database: three
async callables connect it to the control plane, in process (the embedded ``modelplane up``)
or over HTTP (``python -m gateway``, `gateway.remote.RemoteRegistry`).

The API both build the same way (``gateway.app``)::

    from gateway.app import Gateway
    from gateway.stable_url import ServeFront

    gw = Gateway(
        fetch=fetch,        # async (since: str | None) -> contract.traffic.RouteFeed
                            #   a long poll: answers when the table differs from ``since``
                            #   (None: at once) or after ~25 s unchanged; raising is retried
                            #   with a capped backoff while the last table keeps serving
        verifier=verifier,  # async (token: str) -> contract.traffic.KeyGrant | None
                            #   None: no such key (401); raising: 503 for that call, not cached
        reporter=reporter,  # async (contract.traffic.TrafficReport) -> None
                            #   raising: the counts are merged into the next report
        auth=False,         # check keys; also on whenever the latest feed says ``auth``
        gateway_id="host:8080",   # TrafficReport.gateway
        report_s=1.0,       # a report every report_s (none when nothing was counted)
        shadow_queue=256,   # mirrored calls waiting; full: dropped and counted
        shadow_workers=4,
    )
    await gw.start()        # the follower, the reporter and the shadow workers; returns at once
    gw.ready                # True once a first feed was applied (``/readyz``)
    await gw.wait_ready(timeout_s)
    gw.apply(feed)          # apply a RouteFeed now (routes + revoked keys), as the follower does
    gw.asgi                 # the `StableUrl` ASGI app: ``/{deployment}/...`` under root_path
                            #   ``/serve`` (``ServeFront(app, stable=gw.asgi)`` mounts it)
    gw.metrics              # a prometheus_client CollectorRegistry (``/metrics``)
    gw.table, gw.keys, gw.counts, gw.shadow, gw.follower   # the parts, below
    await gw.close()        # stops the tasks, sends a last report, closes the HTTP pool

The parts, each usable alone: `gateway.routes.RouteTable` (``apply(feed)``, ``lookup(name)``,
endpoint choice), `gateway.keys.KeyCache`, `gateway.counts.Counts`, `gateway.shadow.Shadow`,
`gateway.follow.Follower`, `gateway.stable_url.StableUrl(table, *, keys=None, counts=None,
shadow=None, auth=False)`; `gateway.upstream.Upstream` (the kept-alive connections).

``python -m gateway`` (`gateway.server`, `gateway.settings`): ``--registry-url``, ``--token``
(or ``MODELPLANE_GATEWAY_TOKEN`` / ``MODELPLANE_TOKEN``), ``--host``, ``--port``, ``--id``,
``--report-s``, ``--workers N`` (N processes on one port); ``/healthz``, ``/readyz`` (200 once
a first feed arrived), ``/metrics``, ``/serve/...``. See docs/gateway.md.

Calls: ``Authorization: Bearer mp_...`` (when auth is on; the key needs ``read`` or a scope
implying it, and its model globs must match the route's model: 401 / 403 ``{"error": ...}``);
``Modelplane-Version: N`` or a version-addressed path (``/v2/models/{m}/versions/{v}/...``,
``/v1/models/{m}/versions/{v}[:verb]``, ``/predictions/{m}/{v}``) pins a call to version N
(404 naming the versions served when N is not); unpinned calls are shared by the lanes'
``percent``. Paths are forwarded unchanged.
"""

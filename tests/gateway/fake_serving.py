"""A fake serving process (an external peer from the gateway's point of view): answers v2
infer calls with its inputs plus ``--add``, its ``--version`` as ``model_version``, and a
500 on every ``--fail-every``-th call. Run: ``python fake_serving.py --port P --version V``."""

from __future__ import annotations

import argparse
import asyncio
import re

import orjson
import uvicorn

VERSIONED = re.compile(r"^/v2/models/[^/]+/versions/(\d+)(/.*)?$")


def make_app(version: str, add: float, fail_every: int):  # type: ignore[no-untyped-def]
    calls = [0]

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        match = VERSIONED.match(path)
        if match is not None and match.group(1) != version:
            await reply(send, 404, {"error": f"no version {match.group(1)} here"})
            return
        if path == "/stream":  # server-sent events, one every 0.2 s
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for i in range(5):
                event = f"data: {i}\n\n".encode()
                await send({"type": "http.response.body", "body": event, "more_body": True})
                await asyncio.sleep(0.2)
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/big":  # the request body back, three times
            await reply_bytes(send, 200, body * 3)
            return
        if path.endswith("/infer"):
            calls[0] += 1
            if fail_every and calls[0] % fail_every == 0:
                await reply(send, 500, {"error": "failing on purpose"})
                return
            request = orjson.loads(body)
            outputs = [
                {"name": "y", "datatype": "FP32", "shape": t["shape"],
                 "data": [v + add for v in t["data"]]}
                for t in request["inputs"]
            ]  # fmt: skip
            await reply(send, 200, {"model_name": "m", "model_version": version,
                                    "outputs": outputs})  # fmt: skip
            return
        await reply(send, 200, {"model_version": version, "path": path})

    return app


async def reply(send, status, payload):  # type: ignore[no-untyped-def]
    await reply_bytes(send, status, orjson.dumps(payload), b"application/json")


async def reply_bytes(send, status, body, kind=b"application/octet-stream"):  # type: ignore[no-untyped-def]
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--add", type=float, default=0.0)
    parser.add_argument("--fail-every", type=int, default=0)
    options = parser.parse_args()
    app = make_app(options.version, options.add, options.fail_every)
    uvicorn.run(app, host="127.0.0.1", port=options.port, log_level="warning",
                access_log=False, loop="uvloop", http="httptools")  # fmt: skip

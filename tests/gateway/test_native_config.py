"""The native data plane's pure parts: HAProxy's configuration rendered from routes (checked
by HAProxy itself), its counters read per revision, its log lines counted."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from contract.traffic import Lane, LaneRole, Route, quantile
from gateway.counts import Counts
from gateway.native.config import EVERY, SAMPLE, Layout, backends, native, render, revision_of
from gateway.native.engine import PREFIX, _remove_abandoned
from gateway.native.logs import LogCounter
from gateway.native.stats import StatsCounter, parse
from tests.gateway.harness import haproxy_binary

pytestmark = pytest.mark.unit


def lane(revision: int, version: int, role: str, percent: float, *urls: str) -> Lane:
    return Lane(revision=revision, version=version, role=LaneRole(role), percent=percent,
                endpoints=list(urls))  # fmt: skip


def route(*lanes: Lane, name: str = "d") -> Route:
    return Route(deployment=name, model="m", lanes=list(lanes))


def layout(tmp: Path) -> Layout:
    return Layout(host="127.0.0.1", port=18080, slow=("127.0.0.1", 18081),
                  logs=("127.0.0.1", 18082), admin=tmp / "admin.sock",
                  keys=tmp / "keys.map")  # fmt: skip


def test_a_split_weights_each_lanes_servers_by_its_percent_over_its_endpoints() -> None:
    found = backends(route(lane(1, 7, "primary", 90, "http://a:1", "http://b:2"),
                           lane(2, 8, "split", 10, "http://c:3")))  # fmt: skip
    main = {s.name: s.weight for s in found["d.d"]}
    # 45 each for v7's two servers, 10 for v8's one: 256 : 256 : 57
    assert main == {"r1_0": 256, "r1_1": 256, "r2_2": 57}
    assert main["r2_2"] / sum(main.values()) == pytest.approx(0.10, abs=0.002)
    assert [s.address for s in found["d.d.v7"]] == ["a:1", "b:2"]
    assert [s.address for s in found["d.d.v8"]] == ["c:3"]


def test_a_lane_at_zero_percent_takes_only_pinned_calls() -> None:
    found = backends(route(lane(1, 7, "primary", 100, "http://a:1"),
                           lane(2, 8, "canary", 0, "http://c:3")))  # fmt: skip
    assert [s.name for s in found["d.d"]] == ["r1_0"]
    assert [s.name for s in found["d.d.v8"]] == ["r2_0"]


@pytest.mark.parametrize(
    ("why", "the_route"),
    [
        ("a shadow needs the primary's answer", route(lane(1, 7, "primary", 100, "http://a:1"),
                                                      lane(2, 9, "shadow", 20, "http://b:2"))),
        ("a name HAProxy cannot hold", route(lane(1, 7, "primary", 100, "http://a:1"),
                                             name="d.v7")),
        ("https", route(lane(1, 7, "primary", 100, "https://a:1"))),
        ("a path prefix", route(lane(1, 7, "primary", 100, "http://a:1/x"))),
        ("no endpoint (the slow path holds for the next table)", route(lane(1, 7, "primary", 100))),
    ],
)  # fmt: skip
def test_what_haproxy_cannot_route_goes_to_the_slow_path(why: str, the_route: Route) -> None:
    assert not native(the_route), why


def test_a_canary_logs_every_call_others_a_sample(tmp_path: Path) -> None:
    canary = route(lane(1, 7, "primary", 90, "http://a:1"), lane(2, 8, "canary", 10, "http://b:2"))
    plain = route(lane(3, 5, "primary", 100, "http://c:3"), name="e")
    text = render(layout(tmp_path), [canary, plain], auth=True)
    d_section = text.split("backend d.d\n")[1].split("backend ")[0]
    e_section = text.split("backend d.e\n")[1].split("backend ")[0]
    assert f"server r1_0{EVERY} a:1 weight 256" in d_section and "silent" not in d_section
    assert "server r3_0 c:3 weight 256" in e_section
    assert f"rand({SAMPLE})" in e_section
    assert "del-header authorization" in e_section


@pytest.mark.system
@pytest.mark.parametrize("auth", [True, False])
def test_haproxy_accepts_what_is_rendered(tmp_path: Path, auth: bool) -> None:
    binary = haproxy_binary()
    routes = [
        route(
            lane(1, 7, "primary", 90, "http://127.0.0.1:1", "http://[::1]:2"),
            lane(2, 8, "canary", 10, "http://127.0.0.1:3"),
        ),  # fmt: skip
        route(lane(3, 5, "primary", 100, "http://127.0.0.1:4"), name="e"),
        route(
            lane(4, 1, "primary", 100, "http://127.0.0.1:5"),
            lane(5, 2, "shadow", 10, "http://127.0.0.1:6"),
            name="s",
        ),  # fmt: skip
    ]
    (tmp_path / "keys.map").write_text("")
    config = tmp_path / "haproxy.cfg"
    config.write_text(render(layout(tmp_path), routes, auth=auth))
    checked = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "WARNING" not in checked.stdout + checked.stderr
    assert "backend d.s" not in config.read_text()  # the shadow's deployment: slow path


def test_a_server_name_carries_its_revision() -> None:
    assert revision_of("r12_0") == 12
    assert revision_of(f"r12_3{EVERY}") == 12
    assert revision_of("<NOSRV>") is None
    assert revision_of("python") is None


STATS = """Name: HAProxy
Pid: 4242
Uptime_sec: 3

# pxname,svname,qcur,stot,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,eresp
serve,FRONTEND,,90,0,80,0,0,10,0,
d.d,r1_0,0,60,0,55,0,0,5,0,1
d.d,r2_1,0,30,0,25,0,0,4,0,0
d.d,BACKEND,0,90,0,80,0,0,10,0,1
d.d.v8,r2_0,0,7,0,7,0,0,0,0,0
d.e,r3_0_all,0,9,0,9,0,0,0,0,0
slow,python,0,4,0,4,0,0,0,0,0
"""


def test_counters_become_calls_and_errors_per_revision_between_reads() -> None:
    counts = Counts("g", None)
    stats = StatsCounter(counts)
    pid, rows = parse(STATS)
    assert pid == 4242
    stats.add(pid, rows)
    window = {(c.deployment, c.revision): (c.calls, c.errors) for c in counts.take().counts}  # type: ignore[union-attr]
    # r1: 55 + 5 answers + 1 broken off; r2: 29 in d.d, 7 pinned; d.e is counted by its logs
    assert window == {("d", 1): (61, 6), ("d", 2): (36, 4)}
    stats.add(pid, rows)  # the same read again: nothing new
    assert counts.take() is None
    grown = STATS.replace("d.d,r1_0,0,60,0,55", "d.d,r1_0,0,70,0,65")
    stats.add(*parse(grown))
    assert [(c.revision, c.calls) for c in counts.take().counts] == [(1, 10)]  # type: ignore[union-attr]
    stats.add(*parse(STATS))  # a read that started before the last: stale, not counted
    assert counts.take() is None
    stats.add(*parse(STATS.replace("Pid: 4242", "Pid: 4343")))  # a reload's new worker
    assert sum(c.calls for c in counts.take().counts) == 97  # type: ignore[union-attr]


def test_log_lines_count_calls_or_feed_the_latency_sample() -> None:
    counts = Counts("g", None)
    logs = LogCounter(counts, lambda d: 1 if d == "d" else None)
    for line in (b"mp1 d r1_0_all 200 3 -", b"mp1 d r1_0_all 503 40 -",
                 b"mp1 d <NOSRV> 503 0 -", b"mp1 e r3_0 200 7 16",
                 b"Proxy serve stopped (cumulated conns: FE: 1, BE: 0).",
                 b"mp1 d r1_0_all 200"):  # fmt: skip
        logs.count(line)
    assert (logs.lines, logs.unreadable) == (5, 1)
    by = {(c.deployment, c.revision): c for c in counts.take().counts}  # type: ignore[union-attr]
    assert (by["d", 1].calls, by["d", 1].errors) == (3, 2)  # the NOSRV under the first lane
    assert by["e", 3].calls == 0 and sum(by["e", 3].latency) == SAMPLE
    assert quantile(by["e", 3].latency, 0.5) == pytest.approx(7, rel=0.1)


def test_files_of_a_gateway_killed_are_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    dead, live, young = (tmp_path / f"{PREFIX}{n}" for n in ("dead", "live", "young"))
    for directory in (dead, live, young):
        directory.mkdir()
        (directory / "haproxy.cfg").write_text("")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(live / "master.sock"))
        listening.listen()
        for directory in (dead, live):
            os.utime(directory, (0, 0))  # long ago
        _remove_abandoned(tmp_path)
    assert not dead.exists() and live.exists() and young.exists()

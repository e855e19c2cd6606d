"""Counts per revision become reports; a report that fails goes with the next."""

from __future__ import annotations

from contract.traffic import TrafficReport, bucket, quantile
from gateway.counts import Counts


async def test_a_report_holds_calls_errors_and_the_latency_histogram() -> None:
    counts = Counts("g1", None)
    for ms in (1.0, 2.0, 3.0, 100.0):
        counts.tally("d", 1).call(200, ms / 1000)
    counts.tally("d", 1).call(500, 0.005)
    counts.tally("d", 2).call(200, 0.002)
    report = counts.take()
    assert report is not None and report.gateway == "g1"
    assert report.started_at <= report.ended_at
    by = {c.revision: c for c in report.counts}
    assert (by[1].calls, by[1].errors, by[2].calls, by[2].errors) == (5, 1, 1, 0)
    assert by[1].latency[bucket(100.0)] == 1 and sum(by[1].latency) == 5
    p50 = quantile(by[1].latency, 0.5)
    assert p50 is not None and 2.7 <= p50 <= 3.3
    assert counts.take() is None  # nothing since


async def test_a_failed_report_is_merged_into_the_next() -> None:
    sent: list[TrafficReport] = []
    fail = [True]

    async def reporter(report: TrafficReport) -> None:
        if fail[0]:
            raise ConnectionError("control plane away")
        sent.append(report)

    counts = Counts("g1", reporter)
    counts.tally("d", 1).call(200, 0.001)
    await counts.flush()
    assert sent == []
    fail[0] = False
    counts.tally("d", 1).call(503, 0.001)
    await counts.flush()
    [report] = sent
    [c] = report.counts
    assert (c.calls, c.errors, sum(c.latency)) == (2, 1, 2)
    assert counts.totals[("d", 1)].calls == 2

"""docs/grafana-dashboard.json is valid and every series it graphs is one we export."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["registry/metrics.py", "registry/routes/health.py", "deployer/metrics.py",
           "serving/metrics.py"]  # fmt: skip


def test_dashboard_graphs_only_exported_metrics() -> None:
    dashboard = json.loads((REPO / "docs/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs and len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    code = "\n".join((REPO / s).read_text() for s in SOURCES)
    names = {n for e in exprs for n in re.findall(r"\bmodelplane_[a-z_]+", e)}
    for name in names:
        base = re.sub(r"_(bucket|count|sum|total)$", "", name)
        assert f'"{base}"' in code, f"{name} is graphed but not exported"

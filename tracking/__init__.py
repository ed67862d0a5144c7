"""Experiment tracking on a flowlake lake, with SQL over all run history.

>>> import store, tracking
>>> lake = store.open("./lake")                                   # doctest: +SKIP
>>> with tracking.start_run(lake, branch="exp", name="lr=0.1") as run:  # doctest: +SKIP
...     run.log_param("lr", 0.1)
...     run.log_metric("loss", 0.42, step=1)
>>> tracking.sql(lake, "SELECT name, status FROM runs")           # doctest: +SKIP
"""

from __future__ import annotations

from tracking.compaction import BranchCompaction, RunCompaction, compact
from tracking.deployment_compare import (
    Comparison,
    Gate,
    MetricComparison,
    Promotion,
    TimelinePoint,
    check_promotion,
    compare,
    promote,
)
from tracking.deployment_errors import (
    DeploymentNotFoundError,
    DeploymentStateError,
    GateClosedError,
    NoOverlapError,
)
from tracking.deployment_registry import (
    Deployment,
    DeploymentRecord,
    deploy,
    deployment,
    deployments,
    undeploy,
)
from tracking.errors import (
    InvalidMetricError,
    ParamChangedError,
    QueryError,
    RunNotFoundError,
    RunStateError,
    TrackingError,
)
from tracking.lifecycle import resume_run, start_run
from tracking.lineage import lineage
from tracking.model import Artifact, Lineage, RunRecord
from tracking.query import get_metric_history, get_run, search_runs, sql
from tracking.run import Run

__all__ = [
    "Artifact",
    "BranchCompaction",
    "Comparison",
    "Deployment",
    "DeploymentNotFoundError",
    "DeploymentRecord",
    "DeploymentStateError",
    "Gate",
    "GateClosedError",
    "InvalidMetricError",
    "Lineage",
    "MetricComparison",
    "NoOverlapError",
    "ParamChangedError",
    "Promotion",
    "QueryError",
    "Run",
    "RunCompaction",
    "RunNotFoundError",
    "RunRecord",
    "RunStateError",
    "TimelinePoint",
    "TrackingError",
    "check_promotion",
    "compact",
    "compare",
    "deploy",
    "deployment",
    "deployments",
    "get_metric_history",
    "get_run",
    "lineage",
    "promote",
    "resume_run",
    "search_runs",
    "sql",
    "start_run",
    "undeploy",
]

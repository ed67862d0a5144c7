"""The demo's last chapter: both candidates deployed next to production on the same traffic.

Two simulated weeks of held-out cases arrive (the demo's test split, resampled with a fixed
seed); every deployment scores each case with the model it serves, at the commit it pinned, and
when the label arrives logs the outcome per day and per segment (tumour size: ``small`` or
``large``, split at the median radius). ``flowlake compare`` then judges each candidate against
production with always-valid intervals, and the winner goes to ``main`` through the promotion
gate (:func:`tracking.promote`).
"""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.text import Text

import store
import tracking
from store.errors import ObjectNotFoundError
from tracking.deployment_compare import gate
from ui import cli_deploy, render

if TYPE_CHECKING:
    from ui.demo import Candidate

DAYS = 14
CASES_PER_DAY = 60
STREAM_SEED = 7
TARGET = "benign"
SEGMENT_COLUMN = "mean_radius"


def live_trial(
    location: str,
    candidates: list[Candidate],
    console: Console,
    *,
    model_dir: str,
    test_path: str,
    model_tag: str,
    cli: str,
) -> Candidate | None:
    """Deploy every candidate, replay two weeks of cases, compare, promote the winner.

    Returns the promoted candidate, or None when no candidate passes the gate.
    """
    console.rule("4. promotion gate: live, side by side with production")
    # whole UTC days, so the per-day comparison has exactly DAYS days
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start -= timedelta(days=DAYS)
    names: dict[str, Candidate] = {}
    with store.open(location, namespace="production", user="ops") as lake:
        deployed = []
        for candidate in candidates:
            name = f"{candidate.result.recipe.person}-{candidate.result.recipe.kind}"[:60]
            dep = tracking.deploy(
                lake, name, branch=candidate.branch, model=model_dir, deployed_at=start
            )
            names[name] = candidate
            deployed.append(dep)
            console.print(
                Text.assemble(
                    ("deployed ", "green"),
                    (name, "bold"),
                    f": {candidate.branch} @ {render.short(dep.commit)}",
                )
            )
        production = tracking.deployment(lake, "production")
        serving = [production, *deployed]
        predictors = [_predictor(lake, d.commit, model_dir, test_path) for d in serving]
        cases = lake.read_table(test_path, "main")
        _replay(cases, serving, predictors, start)
        for dep in serving:
            dep.close()
        console.print(
            f"{DAYS} days x {CASES_PER_DAY} cases a day scored by production and "
            f"{len(deployed)} candidates; labels logged per day and per segment"
        )
        results = {}
        for name in names:
            console.print(Text(f"\n$ {cli} compare {name} --lake {location}", style="cyan"))
            result = tracking.compare(lake, name)
            cli_deploy.print_comparison(result, console)
            results[name] = result
    gated = {name: result for name, result in results.items() if gate(result).open}
    if not gated:
        console.print(Text("no candidate passes the promotion gate; main is unchanged", "red"))
        return None
    winner = max(gated, key=lambda n: (_gain(gated[n]), n))
    person = names[winner].result.recipe.person
    with store.open(location, user=person) as lake:
        promotion = tracking.promote(lake, winner)
        lake.tag(model_tag, "main")
    console.print(
        Text.assemble(
            ("\ngate open: ", "green"),
            f"{winner} promoted: main {render.short(promotion.merge_commit or '')}, ",
            f"tagged {model_tag}; production now serves it",
        )
    )
    console.print(Text("Open the dashboard on this lake:", style="bold"))
    console.print(Text(f"  {cli} ui --lake {location}", style="cyan"))
    return names[winner]


def _gain(result: tracking.Comparison) -> float:
    accuracy = [r for r in result.metrics if r.metric == "accuracy"]
    return accuracy[0].difference if accuracy else float("-inf")


def _predictor(lake: store.Lake, commit: str, model_dir: str, test_path: str) -> Any:
    """A function from a case table to predicted labels: the model at ``commit``, or the
    majority class of the held-out labels when no model is there (production before any)."""
    try:
        model = pickle.loads(lake.read_bytes(f"{model_dir}/model.pkl", commit))
        meta = lake.read_table(f"{model_dir}/metrics.parquet", commit).to_pylist()[0]
        features = json.loads(meta["features"])
    except ObjectNotFoundError:
        labels = lake.read_table(test_path, commit)[TARGET].to_numpy()
        majority = int(labels.mean() >= 0.5)
        return lambda table: np.full(table.num_rows, majority)

    def predict(table: pa.Table) -> Any:
        return model.predict(np.column_stack([table[f].to_numpy() for f in features]))

    return predict


def _replay(
    cases: pa.Table, serving: list[tracking.Deployment], predictors: list[Any], start: datetime
) -> None:
    rng = np.random.default_rng(STREAM_SEED)
    median = float(np.median(cases[SEGMENT_COLUMN].to_numpy()))
    for day in range(DAYS):
        picked = cases.take(rng.integers(0, cases.num_rows, CASES_PER_DAY))
        labels = picked[TARGET].to_numpy()
        segments = np.where(picked[SEGMENT_COLUMN].to_numpy() > median, "large", "small")
        arrivals = np.sort(rng.uniform(0, 86_400, CASES_PER_DAY))
        for dep, predict in zip(serving, predictors, strict=True):
            predicted = predict(picked)
            for i in range(CASES_PER_DAY):
                stamp = start + timedelta(days=day, seconds=float(arrivals[i]))
                dep.log_metrics(
                    {
                        "accuracy": float(predicted[i] == labels[i]),
                        # a malignant case (label 0) called benign: the costly mistake
                        "malignant_miss": float(labels[i] == 0 and predicted[i] == 1),
                    },
                    step=day * CASES_PER_DAY + i,
                    timestamp=stamp,
                    segment=str(segments[i]),
                )

"""The demo's last chapter: both candidates deployed next to production on the same traffic.

Two simulated weeks of held-out cases arrive (the demo's test split, resampled with a fixed
seed); every deployment scores each case with the model it serves, at the commit it pinned, and
when the label arrives logs the outcome per day and per segment (tumour size: ``small`` or
``large``, split at the median radius). ``flowlake compare`` then judges each candidate against
production with always-valid intervals, and the winner goes to ``main`` through the promotion
gate (:func:`tracking.promote`). Traffic then keeps arriving: production, now serving the winner,
and the other candidates score more cases, and a later promotion is held to those numbers
(production means the model it serves now, measured since its promotion).
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
#: Simulated days of traffic replayed after the promotion, stamped with the time they are scored.
AFTER_DAYS = 2
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
            render.command_line(console, f"{cli} compare {name} --lake {location}", "\n$ ")
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
    after_promotion(location, [n for n in names if n != winner], model_dir, test_path, console)
    console.print(Text("Open the dashboard on this lake:", style="bold"))
    render.command_line(console, f"{cli} ui --lake {location}")
    return names[winner]


def after_promotion(
    location: str, others: list[str], model_dir: str, test_path: str, console: Console
) -> None:
    """Traffic after the promotion, as it arrives: production (now the winner's model) and the
    candidates still live score the same cases. ``production`` in ``compare`` and in the gates
    is the model it serves now, measured only since its promotion, so these are the numbers
    any later promotion is held to."""
    with store.open(location, namespace="production", user="ops") as lake:
        production = tracking.deployment(lake, "production")
        serving = [production, *(tracking.deployment(lake, name) for name in others)]
        predictors = [_predictor(lake, d.commit, model_dir, test_path) for d in serving]
        _replay(lake.read_table(test_path, "main"), serving, predictors, None, AFTER_DAYS)
        for dep in serving:
            dep.close()
    since = production.deployed_at.isoformat(timespec="seconds") if production.deployed_at else ""
    console.print(
        f"since the promotion ({since}): {AFTER_DAYS * CASES_PER_DAY} more cases scored by "
        f"production (main @ {render.short(production.commit)})"
        + "".join(f" and by {name}" for name in others)
        + "; later promotions are held to production's numbers from here on"
    )


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
    cases: pa.Table,
    serving: list[tracking.Deployment],
    predictors: list[Any],
    start: datetime | None,
    days: int = DAYS,
) -> None:
    """Score ``days`` x :data:`CASES_PER_DAY` cases with every deployment: simulated days from
    ``start``, or (start None) stamped as they are scored, now."""
    rng = np.random.default_rng(STREAM_SEED if start is not None else STREAM_SEED + 1)
    median = float(np.median(cases[SEGMENT_COLUMN].to_numpy()))
    for day in range(days):
        picked = cases.take(rng.integers(0, cases.num_rows, CASES_PER_DAY))
        labels = picked[TARGET].to_numpy()
        segments = np.where(picked[SEGMENT_COLUMN].to_numpy() > median, "large", "small")
        arrivals = np.sort(rng.uniform(0, 86_400, CASES_PER_DAY))
        for dep, predict in zip(serving, predictors, strict=True):
            predicted = predict(picked)
            for i in range(CASES_PER_DAY):
                stamp = start + timedelta(days=day, seconds=float(arrivals[i])) if start else None
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

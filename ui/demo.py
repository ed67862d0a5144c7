"""``flowlake demo``: a small continuous-delivery story on a fresh embedded lake.

Dana ingests production data and merges it into ``main`` (tag ``data-v1``); Avery and Blake
each train a model on their own branch in their own namespace, as tracked runs (params, metrics,
model and metrics table), compared with one SQL query; the better candidate passes the
promotion gate: both are deployed next to production, score two simulated weeks of held-out
cases, are compared with ``tracking.compare``, and the winner is promoted into ``main`` through
the gate (tag ``model-v1``). Each chapter is one function over the public store API, so later
chapters (experiment tracking, remote compute) slot in between.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

import compute
import store
import tracking
from store.errors import AlreadyExistsError, InvalidArgumentError, ObjectNotFoundError
from ui import demo_policy, internal, render
from ui.demo_live import live_trial
from ui.demo_models import (
    DATASET,
    RECIPES,
    SPLIT_SEED,
    Recipe,
    TrainingResult,
    load_dataset,
    majority_accuracy,
    metrics_table,
    require_sklearn,
    train,
)

MARKER = "flowlake-demo.json"
TRAIN_PATH = "data/train.parquet"
TEST_PATH = "data/test.parquet"
MODEL_DIR = "models/classifier"
MODEL_PATH = f"{MODEL_DIR}/model.pkl"
METRICS_PATH = "models/classifier/metrics.parquet"
DATA_TAG = "data-v1"
MODEL_TAG = "model-v1"
PERSON_STYLES = {"dana": "bold blue", "avery": "bold magenta", "blake": "bold green"}


@dataclass(frozen=True)
class Candidate:
    """A trained model committed on its author's branch."""

    branch: str
    commit: str
    result: TrainingResult


@dataclass(frozen=True)
class Baseline:
    """What production offers now: the accuracy to beat and where it comes from."""

    accuracy: float
    source: str


@dataclass(frozen=True)
class DemoResult:
    """Where the story ended: the lake, the candidates, and what was promoted."""

    path: Path
    data_commit: str
    candidates: list[Candidate]
    production_accuracy: float
    promoted: Candidate | None

    def as_json(self) -> dict[str, Any]:
        """The outcome as a JSON-ready dict (``flowlake demo --json``)."""
        return {
            "path": str(self.path),
            "data_commit": self.data_commit,
            "production_accuracy": self.production_accuracy,
            "candidates": [
                {
                    "branch": c.branch,
                    "commit": c.commit,
                    "model": c.result.recipe.kind,
                    "metrics": c.result.metrics,
                }
                for c in self.candidates
            ],
            "promoted": self.promoted.branch if self.promoted else None,
        }


def run_demo(path: Path, console: Console, fresh: bool = False) -> DemoResult:
    """Create a demo lake at ``path`` and tell the story on ``console``.

    Raises:
        InvalidArgumentError: ``path`` is a file, or a non-empty folder that holds no demo lake.
        AlreadyExistsError: a demo lake is there and ``fresh`` is false.
        NotInstalledError: scikit-learn is missing.
    """
    require_sklearn()
    prepare_folder(path, fresh)
    location = str(path)
    console.rule("flowlake demo: continuous delivery of a classifier")
    console.print(
        Text(f"A new lake at {path}. Production is branch main: it changes only by merges.\n")
    )
    data_commit = ingest(location, console)
    candidates = experiments(location, console)
    show_runs(location, console)
    production = production_baseline(location)
    compare(candidates, production, console)
    with demo_policy.ci_policy(location, console, _cli_name()):
        promoted = live_trial(
            location,
            candidates,
            console,
            model_dir=MODEL_DIR,
            test_path=TEST_PATH,
            model_tag=MODEL_TAG,
            cli=_cli_name(),
        )
        demo_policy.refused_and_audited(location, candidates, promoted, console, _cli_name())
    epilogue(location, console)
    return DemoResult(path, data_commit, candidates, production.accuracy, promoted)


def prepare_folder(path: Path, fresh: bool) -> None:
    """Create an empty demo lake at ``path``, wiping an earlier demo lake only when ``fresh``.

    Raises:
        InvalidArgumentError: ``path`` is a file, or a non-empty folder that holds no demo lake.
        AlreadyExistsError: a demo lake is there and ``fresh`` is false.
    """
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"{path} is a file; the demo needs a folder")
    if path.is_dir() and any(path.iterdir()):
        if not (path / MARKER).is_file():
            raise InvalidArgumentError(
                f"{path} is not empty and holds no flowlake demo; choose another --path"
            )
        if not fresh:
            raise AlreadyExistsError(
                f"{path} holds the demo lake of an earlier run; pass --fresh to start over"
            )
        shutil.rmtree(path)
    store.open(path, namespace="production").close()
    # Marked right after creation, so a demo interrupted later is still recognised by --fresh.
    (path / MARKER).write_text(json.dumps({"demo": "flowlake", "dataset": DATASET}) + "\n")


def open_as(location: str, login: str) -> store.Lake:
    """The lake seen by ``login`` in namespace ``user:<login>``."""
    return store.open(location, namespace=f"user:{login}", user=login)


def ingest(location: str, console: Console) -> str:
    """Dana ingests the production data on a branch and merges it into main; returns the commit."""
    console.rule("1. production data")
    train_table, test_table = load_dataset()
    with open_as(location, "dana") as lake:
        branch = lake.branch("ingest", source="main")
        _say(console, "dana", f"branches {branch.name} from main")
        branch.write_table(TRAIN_PATH, train_table)
        branch.write_table(TEST_PATH, test_table)
        _say(
            console,
            "dana",
            f"writes {TRAIN_PATH} ({train_table.num_rows} rows) and "
            f"{TEST_PATH} ({test_table.num_rows} rows) from {DATASET}",
        )
        branch.commit(
            "Ingest breast-cancer screening data",
            metadata={
                "source": DATASET,
                "rows": train_table.num_rows + test_table.num_rows,
                "split_seed": SPLIT_SEED,
            },
        )
        merged = lake.merge(branch.name, into="main", message="Publish screening data v1")
        lake.tag(DATA_TAG, "main")
        _say(console, "dana", f"merges it into main ({render.short(merged.id)}), tags {DATA_TAG}")
    return merged.id


def experiments(location: str, console: Console) -> list[Candidate]:
    """Avery and Blake each train a candidate as a compute job pinned to ``data-v1``, both at
    once; each job's run commits model and metrics on its own branch and merges into theirs."""
    console.rule("2. experiments, as compute jobs pinned to data-v1")
    code_dir = Path(__file__).parent
    submitted = []
    for recipe in RECIPES:
        lake = open_as(location, recipe.person)
        job = compute.submit(
            train_job,
            {"recipe": recipe},
            lake=lake,
            input_ref=DATA_TAG,
            output_branch=recipe.branch,
            # Half a core each, so that both candidates train at once even on a one-core machine.
            resources=compute.Resources(cpus=0.5),
            name=recipe.describe(),
            code_dir=code_dir,
        )
        _say(
            console,
            recipe.person,
            f"submits job {job.id[:8]} ({recipe.describe()}) reading {DATA_TAG} "
            f"({render.short(job.spec.input_commit)}), merging into {job.spec.output_branch}",
        )
        submitted.append((recipe, lake, job))
    candidates = []
    for recipe, lake, job in submitted:
        with lake:
            result = job.wait()
            _say(
                console,
                recipe.person,
                f"job {job.id[:8]} (run {(job.run_id or '')[:8]}, gpus {list(job.gpus) or 'none'}) "
                f"trains {recipe.describe()} on {len(result.features)} features: "
                + ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items()),
            )
            _say(console, recipe.person, f"the run commits {MODEL_PATH} and {METRICS_PATH}")
            head = lake.resolve(job.spec.output_branch)
            candidates.append(Candidate(job.spec.output_branch, head, result))
    console.print(
        Text(
            'The same jobs run on a Ray cluster with backend="ray" (address= or RAY_ADDRESS):',
            style="cyan",
        )
    )
    render.command_line(
        console,
        f'compute.submit(train_job, {{...}}, lake=lake, input_ref="{DATA_TAG}", backend="ray")',
    )
    render.command_line(
        console, f"flowlake run --backend ray --input {DATA_TAG} --branch exp -- python train.py"
    )
    return candidates


def train_job(recipe: Recipe) -> TrainingResult:
    """The body of one training job: reads the pinned data, logs the run, returns the result."""
    ctx = compute.context()
    result = train(recipe, ctx.lake.read_table(TRAIN_PATH), ctx.lake.read_table(TEST_PATH))
    run = ctx.run
    run.log_params({"model": recipe.kind, "features": len(result.features)})
    run.log_params(dict(recipe.params))
    run.log_metrics(result.metrics)
    run.set_tag("data", DATA_TAG)
    run.log_model("classifier", pickle.loads(result.model), path=MODEL_DIR)
    run.log_table(
        "metrics",
        metrics_table(result, ctx.target_branch, ctx.input_commit),
        path=METRICS_PATH,
    )
    return result


RUNS_QUERY = """
SELECT r.user, r.name, r.status, p.value AS model, m.value AS accuracy
FROM runs r
JOIN params p ON p.run_id = r.run_id AND p.key = 'model'
JOIN metrics m ON m.run_id = r.run_id AND m.key = 'accuracy'
ORDER BY accuracy DESC
"""


def show_runs(location: str, console: Console) -> None:
    """Everyone's runs, across namespaces, with one SQL query over the tracked history."""
    console.rule("experiment runs (tracking.sql over every namespace)")
    with store.open(location, namespace="production") as lake:
        rows = tracking.sql(lake, RUNS_QUERY).to_pylist()
    table = Table(title="SELECT ... FROM runs JOIN params JOIN metrics", title_justify="left")
    for column in ("user", "name", "status", "model", "accuracy"):
        table.add_column(column, justify="right" if column == "accuracy" else "left")
    for row in rows:
        table.add_row(
            *(Text(str(row[c])) for c in ("user", "name", "status", "model")),
            f"{row['accuracy']:.3f}",
        )
    console.print(table)


def production_baseline(location: str) -> Baseline:
    """The accuracy a candidate must beat: the live model's, else the majority-class rate."""
    with store.open(location, namespace="production") as lake:
        try:
            live = lake.read_table(METRICS_PATH, ref="main").to_pylist()[0]
        except ObjectNotFoundError:
            test_table = lake.read_table(TEST_PATH, ref="main")
            return Baseline(majority_accuracy(test_table), "majority class")
    return Baseline(float(live["accuracy"]), f"live {live['model']}")


def compare(candidates: list[Candidate], production: Baseline, console: Console) -> Candidate:
    """Show every candidate against production; returns the best one."""
    console.rule("3. offline scores")
    table = Table(title="candidates against production", title_justify="left")
    table.add_column("branch", no_wrap=True)
    table.add_column("model")
    for column in ("features", "accuracy", "f1", "roc_auc", "vs main"):
        table.add_column(column, justify="right")
    table.add_row(
        "main", Text(production.source), "", f"{production.accuracy:.3f}", "", "", "", style="dim"
    )
    for candidate in candidates:
        metrics = candidate.result.metrics
        gain = metrics["accuracy"] - production.accuracy
        table.add_row(
            Text(candidate.branch),
            Text(candidate.result.recipe.kind),
            str(len(candidate.result.features)),
            *(f"{metrics[name]:.3f}" for name in ("accuracy", "f1", "roc_auc")),
            Text(f"{gain:+.3f}", style="green" if gain > 0 else "red"),
        )
    console.print(table)
    return max(
        candidates,
        key=lambda c: (c.result.metrics["accuracy"], c.result.metrics["roc_auc"], c.branch),
    )


def epilogue(location: str, console: Console) -> None:
    """Show production's history, what the model release changed, and every branch."""
    console.rule("5. history")
    with store.open(location, namespace="production") as lake:
        console.print(render.commits_table(lake.log("main"), lake.tags(), "log of main"))
        if MODEL_TAG in lake.tags():
            changes, hidden = internal.fold(
                lake.diff(DATA_TAG, MODEL_TAG), lambda c: c.path, show_all=False
            )
            console.print(render.changes_table(changes, f"changes from {DATA_TAG} to {MODEL_TAG}"))
            if hidden:
                console.print(internal.folded_line(hidden, "changes"))
        branches = lake.branches(all_namespaces=True)
        console.print(render.branches_table(branches, "production"))
    console.print(Text("\nExplore it yourself:", style="bold"))
    cli = _cli_name()
    for command in (
        f"{cli} log --lake {location}",
        f"{cli} ls --lake {location} --ref {MODEL_TAG}",
        f"{cli} branch list --all --lake {location}",
        f"{cli} diff main user:{RECIPES[-1].person}/{RECIPES[-1].branch} --lake {location}",
        f'{cli} sql --lake {location} "SELECT name, status FROM runs"',
    ):
        render.command_line(console, command)


def _cli_name() -> str:
    """How to call the flowlake command from here: ``flowlake`` when it is on PATH, else the
    path of the installed script (``.venv/bin/flowlake`` after ``make demo``)."""
    if shutil.which("flowlake"):
        return "flowlake"
    script = Path(sys.executable).with_name("flowlake")
    if not script.exists():
        return "flowlake"
    return min(os.path.relpath(script), str(script), key=len)


def _say(console: Console, person: str, text: str) -> None:
    line = Text(f"{person:>6} ", style=PERSON_STYLES.get(person, "bold"))
    line.append(text)
    console.print(line)

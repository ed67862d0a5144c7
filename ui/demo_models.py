"""The demo's data set and candidate models (scikit-learn; installed with ``flowlake[demo]``).

The data is scikit-learn's bundled breast-cancer screening set (569 samples, 30 features), so the
demo downloads nothing. Everything is seeded: two runs train the same models to the same metrics.
Training returns a :class:`TrainingResult` holding parameters, metrics and model bytes, which is
what an experiment-tracking run records.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from store.errors import NotInstalledError

DATASET = "sklearn.datasets.load_breast_cancer"
TARGET = "benign"
SPLIT_SEED = 42
TEST_FRACTION = 0.25
METRICS = ("accuracy", "f1", "roc_auc")


@dataclass(frozen=True)
class Recipe:
    """How one person trains a candidate model.

    Attributes:
        person: the login of who trains it (their namespace is ``user:<person>``).
        branch: the short name of their experiment branch.
        kind: ``logistic-regression`` or ``random-forest``.
        params: the estimator's hyperparameters.
        feature_prefix: train on the columns starting with this ('' for all).
    """

    person: str
    branch: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    feature_prefix: str = ""

    def features(self, columns: list[str]) -> list[str]:
        """The feature columns this recipe trains on."""
        return [c for c in columns if c != TARGET and c.startswith(self.feature_prefix)]

    def describe(self) -> str:
        """``logistic-regression(C=0.5)``."""
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.kind}({args})"


@dataclass(frozen=True)
class TrainingResult:
    """A trained candidate: what it was trained on, how well it scores, and the model itself."""

    recipe: Recipe
    features: list[str]
    metrics: dict[str, float]
    model: bytes


RECIPES = (
    Recipe("avery", "clf-logreg", "logistic-regression", {"C": 0.5, "max_iter": 2000}),
    Recipe(
        "blake",
        "clf-forest",
        "random-forest",
        {"n_estimators": 200, "max_depth": 5, "random_state": 7},
        feature_prefix="mean_",
    ),
)


def require_sklearn() -> None:
    """Raises: NotInstalledError when scikit-learn is missing (it comes with ``flowlake[demo]``)."""
    if importlib.util.find_spec("sklearn") is None:
        raise NotInstalledError(
            "the demo trains models with scikit-learn: pip install 'flowlake[demo]'"
        )


def load_dataset() -> tuple[pa.Table, pa.Table]:
    """The bundled data set as (train, test) tables, split with a fixed seed.

    Columns are snake_case feature names plus ``benign`` (1 benign, 0 malignant).

    Raises:
        NotInstalledError: scikit-learn is missing.
    """
    require_sklearn()
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    raw = load_breast_cancer()
    names = [str(n).replace(" ", "_") for n in raw.feature_names]
    x_train, x_test, y_train, y_test = train_test_split(
        raw.data, raw.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=raw.target
    )
    return _table(names, x_train, y_train), _table(names, x_test, y_test)


def _table(names: list[str], x: Any, y: Any) -> pa.Table:
    columns = {name: pa.array(x[:, i]) for i, name in enumerate(names)}
    columns[TARGET] = pa.array(y.astype("int8"))
    return pa.table(columns)


def _estimator(kind: str, params: Mapping[str, Any]) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    builders: dict[str, Callable[[], Any]] = {
        "logistic-regression": lambda: make_pipeline(
            StandardScaler(), LogisticRegression(**params)
        ),
        "random-forest": lambda: RandomForestClassifier(**params),
    }
    return builders[kind]()


def _matrix(table: pa.Table, features: list[str]) -> Any:
    import numpy as np

    return np.column_stack([table[name].to_numpy() for name in features])


def train(recipe: Recipe, train_table: pa.Table, test_table: pa.Table) -> TrainingResult:
    """Fit the recipe's model on ``train_table`` and score it on ``test_table``.

    Raises:
        NotInstalledError: scikit-learn is missing.
    """
    require_sklearn()
    features = recipe.features(train_table.column_names)
    model = _estimator(recipe.kind, recipe.params)
    model.fit(_matrix(train_table, features), train_table[TARGET].to_numpy())
    metrics = score(model, features, test_table)
    return TrainingResult(recipe, features, metrics, pickle.dumps(model))


def score(model: Any, features: list[str], test_table: pa.Table) -> dict[str, float]:
    """Accuracy, F1 and ROC AUC of a fitted classifier on a held-out table."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    x, y = _matrix(test_table, features), test_table[TARGET].to_numpy()
    predicted = model.predict(x)
    return {
        "accuracy": round(float(accuracy_score(y, predicted)), 4),
        "f1": round(float(f1_score(y, predicted)), 4),
        "roc_auc": round(float(roc_auc_score(y, model.predict_proba(x)[:, 1])), 4),
    }


def majority_accuracy(test_table: pa.Table) -> float:
    """Accuracy of always predicting the most common class: the bar when no model is live."""
    labels = test_table[TARGET].to_pylist()
    share = sum(labels) / len(labels)
    return round(max(share, 1 - share), 4)


def metrics_table(result: TrainingResult, branch: str, data_commit: str) -> pa.Table:
    """One row describing a candidate: model, parameters, data version and metrics."""
    row: dict[str, Any] = {
        "model": result.recipe.kind,
        "params": json.dumps(dict(result.recipe.params), sort_keys=True),
        "n_features": len(result.features),
        "features": json.dumps(result.features),
        "trained_by": f"user:{result.recipe.person}",
        "branch": branch,
        "data_commit": data_commit,
        **result.metrics,
    }
    return pa.Table.from_pylist([row])

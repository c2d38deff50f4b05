"""Variance reduction: CUPED / regression adjustment on a covariate the assignment cannot affect.

CUPED (Deng, Xu, Kohavi, Walker, "Improving the sensitivity of online controlled experiments by
utilizing pre-experiment data", WSDM 2013): with a covariate X known before assignment,
Y_adj = Y - θ(X - E[X]) with θ = cov(Y, X) / var(X) has the same mean as Y and variance
var(Y)(1 - ρ²), ρ = corr(Y, X). Because X cannot depend on which arm served the request, the
adjusted difference of means is still unbiased. experiment/sequential.py uses a slope per arm
(Lin 2013) in the sequential test; this module builds the covariate and measures the reduction.

What covariate exists here? A request is a wine's 11 features, known before the gateway picks an
arm. Anything computed from the features alone qualifies; anything using the truth (the quality
the reward is computed from) does not. The covariate is each arm's *expected reward given the
features*: an offline model of the quality's distribution given the features, fitted on the
training rows only (never the hold-out the experiment replays), P(q | x), and the arm's own
prediction ŷ_k(x) (also a function of x), combined as E[reward_k | x] = Σ_q P(q | x)·reward(q, ŷ_k(x)).
It is computed for every request and every arm, whichever arm served it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
from sklearn.ensemble import ExtraTreesClassifier

COVARIATE_PREFIX = "covariate_"


def theta(y, x) -> float:
    """θ = cov(Y, X) / var(X) (Deng et al. 2013); 0 when X does not vary."""
    y, x = np.asarray(y, dtype="float64"), np.asarray(x, dtype="float64")
    var = x.var(ddof=1)
    return float(np.cov(y, x, ddof=1)[0, 1] / var) if var > 0 else 0.0


def adjust(y, x, mean_x: float | None = None) -> np.ndarray:
    """Y - θ(X - E[X]); ``mean_x`` the covariate's mean over all requests (default: over these)."""
    y, x = np.asarray(y, dtype="float64"), np.asarray(x, dtype="float64")
    return y - theta(y, x) * (x - (x.mean() if mean_x is None else mean_x))


def variance_ratio(y, x) -> float:
    """var(Y_adj) / var(Y), measured: 1 - ρ² up to the estimate of θ (below 1 means fewer requests)."""
    y = np.asarray(y, dtype="float64")
    return float(adjust(y, x).var(ddof=1) / y.var(ddof=1))


def column(arm: str) -> str:
    """The log column holding ``arm``'s covariate."""
    return f"{COVARIATE_PREFIX}{arm}"


class QualityModel:
    """P(quality | features), fitted offline on the training rows only (extra trees, seeded).

    Extremely randomised trees (Geurts et al. 2006) average many deep, random-split trees. Chosen on
    the training rows alone, in 5-fold cross-validation there (out-of-fold quality distributions and
    arm predictions): they left 0.81/0.78 of the arms' reward variance against 0.84/0.82 for gradient
    boosting and 0.82/0.79 for a random forest (an average of all three: 0.81/0.78), and fit fastest.
    Their leaf size was chosen the same way, on the variance of the adjusted difference over the raw
    one (``bench.experiments.cuped_ratios``, out of fold): trees grown to leaves of one wine leave
    0.798, leaves of two 0.821, of three 0.848 (a fully grown random forest 0.819; more trees, fewer
    features per split or balanced classes change it by under 0.005). A fully grown tree puts a
    training wine in a leaf of its own quality, so a request that repeats a training wine's features
    (the wine data has duplicate rows) gets that wine's quality, as CUPED uses a returning user's
    own earlier data; the covariate is still a function of the features and the training rows only.
    """

    def __init__(self, seed: int = 0, trees: int = 300):
        self.model = ExtraTreesClassifier(n_estimators=trees, min_samples_leaf=1, random_state=seed, n_jobs=1)

    def fit(self, features: pd.DataFrame, quality) -> QualityModel:
        self.model.fit(features, np.asarray(quality))
        return self

    def expected_reward(
        self, features: pd.DataFrame, predictions, reward: Callable | None = None
    ) -> np.ndarray:
        """E[reward(q, ŷ) | x] for each row: Σ_q P(q | x)·reward(q, ŷ(x)); ``predictions`` = ŷ per row."""
        if reward is None:
            from feedback import reward  # the one reward definition
        proba = self.model.predict_proba(features)
        classes = self.model.classes_.astype("float64")
        predictions = np.asarray(predictions, dtype="float64")
        if len(predictions) != len(proba):
            raise ValueError(f"{len(predictions)} predictions for {len(proba)} rows")
        rewards = np.vectorize(reward, otypes=["float64"])(classes[None, :], predictions[:, None])
        return (proba * rewards).sum(axis=1)


def covariates(
    model: QualityModel, features: pd.DataFrame, predictions: Mapping[str, np.ndarray]
) -> pd.DataFrame:
    """One ``covariate_<arm>`` column per arm, indexed like ``features`` (index = the log's request_id)."""
    return pd.DataFrame(
        {column(arm): model.expected_reward(features, pred) for arm, pred in predictions.items()},
        index=features.index,
    )


def table(
    train: pd.DataFrame,
    rows: pd.DataFrame,
    predictions: Mapping[str, np.ndarray],
    features: list[str],
    target: str,
    seed: int = 0,
) -> pd.DataFrame:
    """In one call: fit the quality model on ``train`` and give every row of ``rows`` its covariate per arm.

    ``rows``: the requests' features (the hold-out, indexed by request_id); ``predictions``: each
    arm's model's prediction for those rows (from the models the arms serve, run offline).
    """
    model = QualityModel(seed).fit(train[features], train[target])
    return covariates(model, rows[features], predictions)


def with_covariates(rows: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The log's rows with the covariate columns joined on ``request_id``; every row must find its own."""
    joined = rows.join(table, on="request_id")
    missing = joined[list(table.columns)].isna().any(axis=1)
    if missing.any():
        ids = joined.loc[missing, "request_id"].tolist()[:5]
        raise ValueError(f"{int(missing.sum())} requests have no covariate (request ids {ids})")
    return joined


def variance_reduction(rows: pd.DataFrame) -> dict[str, float]:
    """Per arm: var(adjusted reward) / var(reward) on the rows it served, with its own covariate column."""
    out = {}
    for arm, group in rows.groupby("arm", sort=True):
        if column(arm) in group.columns and len(group) > 2:
            out[str(arm)] = variance_ratio(group["reward"], group[column(arm)])
    return out

"""Train one arm of the A/B test: an ElasticNet on the wine-quality training rows.

    mlflow run training -P alpha=0.1 -P l1_ratio=0.1 -P alias=a --env-manager local

Logs params and hold-out RMSE/MAE/R², logs the model with its signature and an input example,
registers it as a new version of ``wines-classifier`` and points the registry alias at it.
"""

import argparse
import sys
from importlib.metadata import version

import mlflow
import numpy as np

# run as a script by `mlflow run` (cwd = training/), so the sibling module is importable as `data`
from data import FEATURES, HOLDOUT_FRACTION, SEED, TARGET, DataError, load_wine_quality, split_holdout
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from sklearn.linear_model import ElasticNet
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

MODEL_NAME = "wines-classifier"
# What the pickled model needs, pinned to this environment. Stating it skips MLflow's requirement
# inference, which loads the model again in a subprocess (about 3 s of every run).
REQUIREMENTS = [
    f"{package}=={version(package)}"
    for package in ("scikit-learn", "cloudpickle", "numpy", "pandas", "scipy")
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, required=True, help="regularisation strength, >= 0")
    parser.add_argument("--l1-ratio", type=float, default=0.1, help="L1/L2 mix, in [0, 1]")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the train/hold-out split")
    parser.add_argument("--alias", default="", help="registry alias for this version, e.g. a or b")
    args = parser.parse_args(argv)
    if not np.isfinite(args.alpha) or args.alpha < 0:
        parser.error(f"alpha must be a finite number >= 0, got {args.alpha}")
    if not np.isfinite(args.l1_ratio) or not 0 <= args.l1_ratio <= 1:
        parser.error(f"l1_ratio must be between 0 and 1, got {args.l1_ratio}")
    if args.alias and not args.alias.replace("-", "").replace("_", "").isalnum():
        parser.error(f"alias must be letters, digits, '-' or '_', got {args.alias!r}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        train, holdout = split_holdout(load_wine_quality(), seed=args.seed)
    except DataError as e:
        sys.exit(f"error: {e}")

    model = ElasticNet(alpha=args.alpha, l1_ratio=args.l1_ratio, random_state=args.seed)
    model.fit(train[FEATURES], train[TARGET])
    predicted = model.predict(holdout[FEATURES])
    rmse = float(np.sqrt(mean_squared_error(holdout[TARGET], predicted)))
    mae = float(mean_absolute_error(holdout[TARGET], predicted))
    r2 = float(r2_score(holdout[TARGET], predicted))

    name = f"elasticnet-alpha-{args.alpha:g}-l1-{args.l1_ratio:g}"
    with mlflow.start_run():  # resumes the run that `mlflow run` created
        mlflow.set_tag("mlflow.runName", name)
        mlflow.log_params(
            {
                "alpha": args.alpha,
                "l1_ratio": args.l1_ratio,
                "seed": args.seed,
                "holdout_fraction": HOLDOUT_FRACTION,
                "train_rows": len(train),
                "holdout_rows": len(holdout),
            }
        )
        mlflow.log_metrics({"rmse": rmse, "mae": mae, "r2": r2})
        info = mlflow.sklearn.log_model(
            model,
            artifact_path="model",
            signature=infer_signature(train[FEATURES], model.predict(train[FEATURES])),
            input_example=train[FEATURES].head(3),
            pip_requirements=REQUIREMENTS,
            registered_model_name=MODEL_NAME,
        )
        version = info.registered_model_version
        client = MlflowClient()
        client.set_model_version_tag(MODEL_NAME, version, "alpha", str(args.alpha))
        client.set_model_version_tag(MODEL_NAME, version, "l1_ratio", str(args.l1_ratio))
        if args.alias:
            client.set_registered_model_alias(MODEL_NAME, args.alias, version)

    print(f"run {name}")
    print(f"  alpha={args.alpha:g} l1_ratio={args.l1_ratio:g}", end="  ")
    print(f"hold-out: RMSE={rmse:.4f} MAE={mae:.4f} R2={r2:.4f}")
    alias = f" @{args.alias}" if args.alias else ""
    print(f"  registered {MODEL_NAME} version {version}{alias}")


if __name__ == "__main__":
    main()

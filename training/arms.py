"""The two arms of the A/B test, defined once: the notebook, the README and `make train` read them
from here, so the narrative and the code cannot disagree on the alphas.

    python -m training.arms      # train and register both arms
"""

from training.tracking import run_arm, use_local_store

# A: light regularisation; B: heavy regularisation, which shrinks the model towards the mean.
ARMS = {
    "a": {"alpha": 0.01, "l1_ratio": 0.1},
    "b": {"alpha": 1.0, "l1_ratio": 0.5},
}


def train_arms(arms: dict = ARMS) -> dict:
    """Run the MLproject once per arm; return alias -> registered ModelVersion."""
    use_local_store()
    return {alias: run_arm(alias=alias, **params) for alias, params in arms.items()}


if __name__ == "__main__":
    for alias, version in train_arms().items():
        print(f"@{alias} -> wines-classifier version {version.version}")

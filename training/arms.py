"""The two arms of the A/B test, defined once: the notebook, the README and `make train` read them
from here, so the narrative and the code cannot disagree on the alphas.

    python -m training.arms            # train and register both arms
    python -m training.arms --three    # and the third arm of the A/B/n example (serving/model-a-b-c.yaml)
"""

import sys

from training.tracking import run_arm, use_local_store

# A: light regularisation; B: heavy regularisation, which shrinks the model towards the mean.
ARMS = {
    "a": {"alpha": 0.01, "l1_ratio": 0.1},
    "b": {"alpha": 1.0, "l1_ratio": 0.5},
}
# The A/B/n example's third arm (serving/model-a-b-c.yaml), kept out of ARMS so the A/B test stays two
# arms: so much regularisation that every coefficient is 0, so it predicts the training mean - the
# floor any model must beat, and the champion both others challenge.
ARM_C = {"c": {"alpha": 100.0, "l1_ratio": 1.0}}


def train_arms(arms: dict = ARMS) -> dict:
    """Run the MLproject once per arm; return alias -> registered ModelVersion."""
    use_local_store()
    return {alias: run_arm(alias=alias, **params) for alias, params in arms.items()}


if __name__ == "__main__":
    for alias, version in train_arms(ARMS | ARM_C if "--three" in sys.argv[1:] else ARMS).items():
        print(f"@{alias} -> wines-classifier version {version.version}")

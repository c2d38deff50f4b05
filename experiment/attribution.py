"""Where the rewards landed: feedback through the ingress, measured against feedback to each arm."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from experiment.log import LogError, accepted_feedback


@dataclass(frozen=True)
class Attribution:
    fraction: float  # of accepted rewards, the share counted by the arm that served the prediction
    n: int
    table: pd.DataFrame  # per arm: the truth (by serving arm) vs what a dashboard computes (by counting arm)

    def summary(self) -> str:
        lines = [f"{self.fraction:.1%} of {self.n} rewards landed on the arm that served the prediction"]
        for arm, row in self.table.iterrows():
            lines.append(
                f"  {arm}: true mean reward {row['true_mean_reward']:.3f} (n={row['served']:.0f}), "
                f"dashboard mean reward {row['dashboard_mean_reward']:.3f} (n={row['counted']:.0f})"
            )
        return "\n".join(lines)


def attribution(log) -> Attribution:
    """Where the rewards landed, and what that does to the dashboard's per-arm mean reward.

    The truth groups rewards by ``arm`` (the predictor that served the prediction); a dashboard
    can only group by the model server that *counted* the feedback (``feedback_arm``). With
    feedback sent to each arm's own endpoint the two are the same request by request. Posted to
    the ingress, feedback is split at random like predictions, so with a 50/50 split about half
    the rewards land on the other arm and both arms' dashboard means drift towards each other.
    """
    rows = accepted_feedback(log)
    if rows.empty:
        raise LogError("the feedback log has no accepted feedback")
    true = rows.groupby("arm")["reward"].agg(served="size", true_mean_reward="mean")
    shown = rows.groupby("feedback_arm")["reward"].agg(counted="size", dashboard_mean_reward="mean")
    table = true.join(shown, how="outer").fillna({"served": 0, "counted": 0})
    table["dashboard_bias"] = table["dashboard_mean_reward"] - table["true_mean_reward"]
    table.index.name = "arm"
    return Attribution(float((rows["arm"] == rows["feedback_arm"]).mean()), len(rows), table)

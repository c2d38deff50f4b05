"""The project's bandit routers, seldon-core Python components for a ``ROUTER`` graph node.

    python -m serving.microservice serving.routers.ThompsonSampling --service-type ROUTER

``EpsilonGreedy`` and ``ThompsonSampling`` (serving/routers/bandit.py says what they share: one
reward per feedback, 400s for feedback they cannot learn from, state in a file that survives a
``kill -9``, per-branch gauges). serving/model-bandit.yaml serves one.
"""

from serving.routers.bandit import BadFeedback, Router
from serving.routers.epsilon_greedy import EpsilonGreedy
from serving.routers.thompson import ThompsonSampling

__all__ = ["BadFeedback", "EpsilonGreedy", "Router", "ThompsonSampling"]

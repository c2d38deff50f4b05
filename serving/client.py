"""A client of the Seldon protocol: SeldonClient's messages on keep-alive connections, with every
failure told apart by whether the request was sent (what a caller may safely send again).

The messages are the JSON that ``SeldonClient.predict(..., payload_type="ndarray")`` and
``SeldonClient.feedback(...)`` post (tests/reliability/test_equivalence.py checks they are the
same); the transport is one aiohttp session per event loop instead of SeldonClient's new
``requests`` session and connection per call. ``feedback.py`` replays rows with it.
"""

from __future__ import annotations

import time

import aiohttp
import numpy as np

JSON_HEADERS = {"Content-Type": "application/json"}


class NotSent(Exception):
    """No connection could be opened (refused, unreachable): nothing was sent, safe to resend."""


class NoAnswer(Exception):
    """The request went out but no HTTP answer came (reset, disconnected): it may have been processed."""


class Connections:
    """Keep-alive HTTP(S) connections for the replays of one event loop (an aiohttp session).

    SeldonClient's REST transport opens a new ``requests`` session and connection per call; with
    8 rows in flight on one loop and connections kept alive, the client needs about a tenth of
    the CPU per row (bench/README.md), and still sends exactly SeldonClient's messages.
    """

    def __init__(self, concurrency: int):
        # kept-alive connections are dropped after 1.5 s, before gunicorn (2 s) closes them
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4 * concurrency, keepalive_timeout=1.5),
            headers=JSON_HEADERS,
        )
        self._unreachable_since: float | None = None  # first refused connection since the last answer

    def unreachable_for(self) -> float:
        """Seconds since connections started failing to open (0 while they open)."""
        since = self._unreachable_since
        return 0.0 if since is None else time.monotonic() - since

    async def post(
        self, url: str, body: bytes, timeout: float, headers: dict | None = None
    ) -> tuple[int, bytes]:
        """(status, payload); raises NotSent, NoAnswer, or TimeoutError after ``timeout``.
        ``headers``: added to this request's (e.g. ``Seldon-Puid``)."""
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                payload = await response.read()
        except TimeoutError:
            raise  # the request may have arrived: the caller must not send it twice
        except aiohttp.ClientConnectorError as e:  # before anything was written
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
            raise NotSent(f"cannot connect to {url.split('/')[2]}: {e.os_error or e}") from e
        except aiohttp.ClientError as e:
            raise NoAnswer(f"{type(e).__name__}: {e}") from e
        self._unreachable_since = None
        return response.status, payload

    async def close(self) -> None:
        await self.session.close()


def prediction_request(features: np.ndarray, names: list[str]) -> dict:
    """What ``SeldonClient.predict(data=features, names=names, payload_type="ndarray")`` posts.

    SeldonClient builds a SeldonMessage proto and converts it to this JSON; the dict is built
    directly here (tests/reliability checks both are the same).
    """
    return {"data": {"names": list(names), "ndarray": features.tolist()}, "meta": {}}


def feedback_message(request: dict, response: dict, reward_value: float) -> dict:
    """What ``SeldonClient.feedback(prediction_request, prediction_response, reward)`` posts: a
    Feedback message holding the request, the response as the server sent it, and the reward."""
    return {"request": request, "response": response, "reward": reward_value}


def first_value(response: dict) -> float:
    """The first number of a prediction's answer (``tensor`` or ``ndarray``)."""
    data = response["data"]
    if "tensor" in data:
        return float(data["tensor"]["values"][0])
    value = data["ndarray"][0]
    return float(value[0] if isinstance(value, list) else value)

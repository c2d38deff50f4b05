"""Property-based fuzzing of the gateway and of a model server with hostile payloads (hypothesis).

Every generated request must get an answer below 500 - bad input is the client's problem and
is answered 4xx naming it; a 5xx would mean the server broke - and a good request must still
succeed afterwards. ``derandomize=True`` keeps CI reproducible (the same examples every run);
set ``FUZZ_SCALE=10`` (or more) for a longer, freshly random search on a developer's machine.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zlib

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.traffic import PREDICTION, ROW
from training.data import FEATURES

pytestmark = [pytest.mark.stack, pytest.mark.slow]

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
# ≥ 1,000 generated bad payloads in all: 2 x 300 predictions + 2 x 225 feedbacks = 1,050
EXAMPLES = {"predictions": int(300 * SCALE), "feedback": int(225 * SCALE)}
FUZZ_SETTINGS = dict(
    deadline=None,
    derandomize=SCALE == 1,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)

# ------------------------------------------------------------------------------------ strategies
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
numbers = st.floats(allow_nan=False, allow_infinity=False, width=64)
# JSON number tokens Python's parser accepts (or that are not JSON at all) but no model can use
raw_tokens = st.sampled_from(
    [
        "NaN",
        "-NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        "1" + "0" * 400,
        "-" + "9" * 4000,
        "1e-400",
        "-0.0",
        "0x10",
        "01",
        "1.",
        "+1",
        ".5",
        "1e",
        "true",
        "null",
        '"7.0"',
        "[]",
        "{}",
        "9" * 5000,
    ]
)
names = st.one_of(
    st.none(),
    scalars,
    st.lists(st.text(max_size=14), max_size=13),
    st.lists(st.sampled_from(FEATURES), max_size=13),  # duplicates, missing ones, wrong order
    st.permutations(FEATURES).map(list),  # a valid shuffle (must work)
)
rows = st.one_of(
    st.lists(st.lists(st.one_of(numbers, scalars), max_size=14), max_size=4),  # wrong lengths / types
    st.lists(st.lists(numbers, min_size=11, max_size=11), min_size=0, max_size=3),  # right shape, any floats
    values,
)
tensors = st.fixed_dictionaries(
    {},
    optional={
        "shape": st.one_of(st.lists(st.one_of(st.integers(-3, 30), scalars), max_size=4), values),
        "values": st.one_of(st.lists(st.one_of(numbers, scalars), max_size=40), values),
    },
)
data_objects = st.one_of(
    st.fixed_dictionaries({"ndarray": rows}, optional={"names": names}),
    st.fixed_dictionaries({"tensor": tensors}, optional={"names": names}),
    st.dictionaries(
        st.sampled_from(["strData", "binData", "jsonData", "tftensor", "ndarray", "tensor", "names", "x"]),
        values,
        max_size=3,
    ),
    values,
)
prediction_objects = st.one_of(
    st.fixed_dictionaries({"data": data_objects}, optional={"meta": values, "puid": values}),
    st.dictionaries(
        st.sampled_from(["data", "meta", "strData", "binData", "jsonData", "status", ""]), values, max_size=3
    ),
    values,
)


def deep(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


def with_token(token: str, position: int) -> str:
    """A well-formed request whose one value is a raw token such as NaN or a 400-digit integer."""
    row = [json.dumps(v) for v in ROW]
    row[position] = token
    return '{"data": {"names": %s, "ndarray": [[%s]]}}' % (json.dumps(FEATURES), ", ".join(row))  # noqa: UP031 (JSON braces)


BIG = json.dumps(
    {"data": {"names": FEATURES, "ndarray": [ROW] * 12_000}}
)  # ~1.4 MB: over the gateway's 1 MiB
raw_predictions = st.one_of(
    prediction_objects.map(json.dumps),
    st.builds(with_token, raw_tokens, st.integers(0, 10)),
    st.builds(deep, st.integers(50, 120_000), st.sampled_from(["list", "dict"])),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),  # not JSON, maybe not UTF-8
    st.sampled_from(["", "{", '{"data": {"ndarray": [[1, 2', "\x00", "\ufeff{}", BIG, BIG[: len(BIG) // 2]]),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json",
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "",
        "application/json; charset=utf-16",
        "application/json; charset=latin-1",
        "image/png",
    ]
)


@st.composite
def feedback_bodies(draw) -> str:
    """Feedback: a well-formed Feedback with one broken part, or anything at all."""
    good_response = {"data": {"names": ["t:0"], "ndarray": [5.5]}, "meta": {"requestPath": {"model-a": "x"}}}
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return json.dumps(draw(values))
    if kind == 1:  # a raw reward token: NaN, Infinity, 1e999, a string...
        return '{"request": %s, "response": %s, "reward": %s}' % (  # noqa: UP031 (JSON braces)
            json.dumps(PREDICTION),
            json.dumps(good_response),
            draw(raw_tokens),
        )
    body = {"request": PREDICTION, "response": good_response, "reward": 0.5}
    part = draw(st.sampled_from(["request", "response", "reward", "truth", "extra"]))
    if part == "extra":
        body[draw(st.text(max_size=8))] = draw(values)
    elif part == "reward":
        body["reward"] = draw(
            st.one_of(
                values,
                st.floats(allow_nan=False, allow_infinity=False),
                st.just(0),
                st.just(3.5e38),
                st.just(1e39),
            )
        )
    else:
        body[part] = draw(st.one_of(values, prediction_objects))
    return json.dumps(body)


# ------------------------------------------------------------------------------------ the tests
def targets(stack) -> dict[str, str]:
    return {
        "gateway": stack.ingress_url,  # Istio + executor: the client-facing path
        "model server": stack.urls["models"]["model-a"] + "/api/v1.0",  # the seldon-core microservice itself
    }


def post(session: requests.Session, url: str, body: str, content_type: str) -> requests.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return session.post(url, data=data, headers=headers, timeout=30)


def still_serves(session: requests.Session, base: str) -> None:
    good = session.post(f"{base}/predictions", json=PREDICTION, timeout=30)
    assert good.status_code == 200, good.text
    assert len(good.json()["data"]["ndarray"]) == 1


@pytest.mark.parametrize("where", ["gateway", "model server"])
def test_hostile_predictions_get_4xx_never_5xx(private_stack, where):
    base = targets(private_stack)[where]
    session = requests.Session()
    seen = {"sent": 0, "status": {}}

    @settings(max_examples=EXAMPLES["predictions"], **FUZZ_SETTINGS)
    @given(body=raw_predictions, content_type=content_types)
    def check(body, content_type):
        response = post(session, f"{base}/predictions", body, content_type)
        seen["sent"] += 1
        seen["status"][response.status_code] = seen["status"].get(response.status_code, 0) + 1
        assert response.status_code < 500, (
            f"{response.status_code} for {body[:300]!r} ({content_type}): {response.text[:500]}"
        )
        if response.status_code != 200:
            assert response.json()["status"]["info"], "a 4xx must say what is wrong"

    check()
    assert seen["sent"] >= EXAMPLES["predictions"] * 0.9, seen
    assert any(400 <= s < 500 for s in seen["status"]), seen
    still_serves(session, base)


@pytest.mark.parametrize("where", ["gateway", "model server"])
def test_hostile_feedback_gets_4xx_never_5xx_and_never_poisons_the_counters(private_stack, where):
    base = targets(private_stack)[where]
    if where == "gateway":  # feedback goes to the arm's own endpoint (the predictor's Service)
        base = private_stack.predictor_urls["model-a"] + "/api/v1.0"
    session = requests.Session()
    seen = {"sent": 0, "status": {}}

    @settings(max_examples=EXAMPLES["feedback"], **FUZZ_SETTINGS)
    @given(body=feedback_bodies(), content_type=content_types)
    # what earlier searches found (each was a 500 before serving/microservice.py's fixes)
    @example(body="false", content_type="application/json")
    @example(body='{"request": {"data": {"tensor": {}}}, "reward": 0.5}', content_type="application/json")
    @example(body='{"request": {"data": {"tftensor": []}}, "reward": 0.5}', content_type="application/json")
    @example(
        body='{"request": %s, "reward": 1%s}' % (json.dumps(PREDICTION), "0" * 400),  # noqa: UP031 (JSON braces)
        content_type="application/json",
    )
    def check(body, content_type):
        response = post(session, f"{base}/feedback", body, content_type)
        seen["sent"] += 1
        seen["status"][response.status_code] = seen["status"].get(response.status_code, 0) + 1
        assert response.status_code < 500, (
            f"{response.status_code} for {body[:300]!r} ({content_type}): {response.text[:500]}"
        )

    check()
    assert seen["sent"] >= EXAMPLES["feedback"] * 0.9, seen
    # whatever was accepted, the reward counter stays a finite number (no NaN/Inf smuggled in)
    metrics = requests.get(private_stack.urls["model_metrics"]["model-a"], timeout=10).text
    rewards = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("seldon_api_model_feedback_reward_total{")
    ]
    assert rewards and all(math.isfinite(r) for r in rewards), rewards
    still_serves(session, base)
    good = {
        "request": PREDICTION,
        "response": session.post(f"{base}/predictions", json=PREDICTION, timeout=30).json(),
        "reward": 0.5,
    }
    assert session.post(f"{base}/feedback", json=good, timeout=30).status_code == 200


@st.composite
def encoded_bodies(draw) -> tuple[bytes, str]:
    """A body and the Content-Encoding it claims: compressed right, compressed then cut or padded,
    or not compressed at all; codings the gateway decodes, others, lists and odd spellings."""
    codings = ["gzip", "deflate", "GZIP", "x-gzip", "identity", "gzip, deflate", "br", "zstd", "compress", ""]
    coding = draw(st.sampled_from([*codings, "gzip;q=1"]))
    payload = draw(st.one_of(st.just(json.dumps(PREDICTION)), raw_predictions)).encode(
        "utf-8", "surrogatepass"
    )
    how = draw(st.sampled_from(["gzip", "zlib", "raw deflate", "none"]))
    if how == "gzip":
        body = gzip.compress(payload)
    elif how == "zlib":
        body = zlib.compress(payload)
    elif how == "raw deflate":
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body = packer.compress(payload) + packer.flush()
    else:
        body = payload
    cut = draw(st.one_of(st.none(), st.integers(0, max(0, len(body) - 1))))
    body = body[:cut] if cut is not None else body
    return body + draw(st.binary(max_size=8)), coding


@pytest.mark.parametrize("port", ["ingress", "predictor"])
def test_hostile_content_encodings_get_4xx_never_5xx(private_stack, port):
    base = (
        private_stack.ingress_url
        if port == "ingress"
        else private_stack.predictor_urls["model-a"] + "/api/v1.0"
    )
    session = requests.Session()
    seen = {"sent": 0, "status": {}}

    @settings(max_examples=int(100 * SCALE), **FUZZ_SETTINGS)
    @given(sent=encoded_bodies())
    @example(sent=(b"not gzip", "gzip"))  # aiohttp's own decoding answered this with a 500 page
    def check(sent):
        body, coding = sent
        response = session.post(
            f"{base}/predictions",
            data=body,
            headers={"Content-Type": "application/json", "Content-Encoding": coding},
            timeout=30,
        )
        seen["sent"] += 1
        seen["status"][response.status_code] = seen["status"].get(response.status_code, 0) + 1
        assert response.status_code < 500, (
            f"{response.status_code} for {body[:100]!r} ({coding}): {response.text[:500]}"
        )
        if response.status_code != 200:
            assert response.json()["status"]["info"], "a 4xx must say what is wrong"

    check()
    assert seen["status"].get(200) and any(400 <= s < 500 for s in seen["status"]), seen
    still_serves(session, base)

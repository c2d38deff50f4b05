"""The data loader: formats, validation errors, the download path (over real HTTP on loopback)."""

import functools
import http.server
import math
import subprocess
import sys
import threading

import pandas as pd
import pytest

from training import data
from training.data import FEATURES, TARGET, DataError


@pytest.fixture(scope="module")
def wine() -> pd.DataFrame:
    return data.load_wine_quality()


def write_uci(df: pd.DataFrame, path, sep=";"):
    """Write rows the way the UCI archive does: semicolon-separated, quoted header."""
    header = sep.join(f'"{c}"' for c in df.columns)
    body = df.to_csv(sep=sep, header=False, index=False)
    path.write_text(header + "\n" + body)
    return path


def test_loads_the_full_data_set_with_float_features(wine):
    assert len(wine) == data.EXPECTED_ROWS
    assert list(wine.columns) == FEATURES + [TARGET]
    assert all(wine[c].dtype == "float64" for c in FEATURES)  # the signature depends on it
    assert wine[TARGET].between(3, 9).all()


@pytest.mark.parametrize("sep", [";", ","])
def test_reads_both_the_uci_and_the_comma_format(wine, tmp_path, sep):
    path = write_uci(wine.head(50), tmp_path / "w.csv", sep)
    df = data.read_wine_quality(path, expected_rows=50)
    pd.testing.assert_frame_equal(df, wine.head(50))


def test_truncated_file_is_named_as_such(wine, tmp_path):
    path = write_uci(wine.head(1200), tmp_path / "w.csv")
    with pytest.raises(DataError, match=r"1200 rows, expected 4898 - the file looks truncated"):
        data.read_wine_quality(path)


def test_non_numeric_value_names_column_and_row(wine, tmp_path):
    bad = wine.head(20).astype({"pH": object})
    bad.loc[bad.index[7], "pH"] = "acidic"
    path = write_uci(bad, tmp_path / "w.csv")
    with pytest.raises(
        DataError, match=r"column 'pH' has 1 missing or non-numeric value\(s\), first at data row 8: 'acidic'"
    ):
        data.read_wine_quality(path, expected_rows=20)


def test_missing_value_is_an_error(wine, tmp_path):
    path = write_uci(wine.head(20), tmp_path / "w.csv")
    lines = path.read_text().splitlines()
    lines[3] = ";".join(lines[3].split(";")[:-1] + [""])  # empty quality
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="column 'quality'"):
        data.read_wine_quality(path, expected_rows=20)


def test_wrong_columns_are_listed(wine, tmp_path):
    path = write_uci(wine.head(5).rename(columns={"alcohol": "abv"}), tmp_path / "w.csv")
    with pytest.raises(DataError, match=r"missing: \['alcohol'\]; unexpected: \['abv'\]"):
        data.read_wine_quality(path, expected_rows=5)


def test_binary_garbage_and_missing_file(tmp_path):
    junk = tmp_path / "junk.csv"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="junk.csv"):
        data.read_wine_quality(junk)
    with pytest.raises(DataError, match="no such file"):
        data.read_wine_quality(tmp_path / "absent.csv")


def test_environment_variable_points_at_a_local_copy(wine, tmp_path, monkeypatch):
    path = write_uci(wine.head(30), tmp_path / "copy.csv", ",")
    monkeypatch.setenv(data.ENV_VAR, str(path))
    assert len(data.load_wine_quality(expected_rows=30)) == 30


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/served."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_caches_a_valid_file_once(wine, tmp_path, http_folder, monkeypatch):
    served, base = http_folder
    write_uci(wine.head(40), served / "winequality-white.csv")
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    cache = tmp_path / "cache" / "winequality-white.csv"
    df = data.load_wine_quality(url=f"{base}/winequality-white.csv", cache_path=cache, expected_rows=40)
    assert len(df) == 40 and cache.is_file()
    (served / "winequality-white.csv").unlink()  # a second load must not download again
    again = data.load_wine_quality(url=f"{base}/winequality-white.csv", cache_path=cache, expected_rows=40)
    pd.testing.assert_frame_equal(df, again)


def test_download_failure_says_how_to_work_offline(tmp_path, http_folder, monkeypatch):
    _, base = http_folder
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    cache = tmp_path / "cache" / "w.csv"
    with pytest.raises(DataError, match=f"Point {data.ENV_VAR} at a local copy"):
        data.load_wine_quality(url=f"{base}/missing.csv", cache_path=cache)
    assert not cache.exists()


def test_a_corrupt_download_is_never_cached(wine, tmp_path, http_folder, monkeypatch):
    served, base = http_folder
    write_uci(wine.head(100), served / "w.csv")
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    cache = tmp_path / "cache" / "w.csv"
    with pytest.raises(DataError, match="truncated"):
        data.load_wine_quality(url=f"{base}/w.csv", cache_path=cache)
    assert not cache.exists() and not list(cache.parent.glob("*.part"))


def test_holdout_and_training_rows_never_overlap(wine):
    train, holdout = data.split_holdout(wine)
    assert not set(train.index) & set(holdout.index)
    assert len(train) + len(holdout) == len(wine)
    assert len(holdout) == math.ceil(len(wine) * data.HOLDOUT_FRACTION)  # scikit-learn rounds up


def test_split_depends_on_the_seed_alone_even_in_a_fresh_process(wine):
    _, holdout = data.split_holdout(wine, seed=7)
    code = (
        "from training import data;"
        "_, h = data.split_holdout(data.load_wine_quality(), seed=7);"
        "print(','.join(map(str, h.index)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ",".join(map(str, holdout.index))
    _, other = data.split_holdout(wine, seed=8)
    assert set(other.index) != set(holdout.index)

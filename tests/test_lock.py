"""requirements.lock agrees with requirements.txt, so `make setup` installs what the readable list says.

Editing requirements.txt without `make lock` fails here, in the fast loop, instead of on a fresh
machine that installs the stale lock.
"""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def lock_entries() -> list[tuple[str, Version, str]]:
    """(name, version, the entry's text with its hashes) for every package the lock pins."""
    text = (REPO / "requirements.lock").read_text()
    entries = []
    for block in re.split(r"\n(?=\S)", text):
        match = PIN.match(block)
        if match:
            entries.append((canonicalize_name(match[1]), Version(match[2]), block))
    return entries


def direct_requirements() -> list[Requirement]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [
        Requirement(line.split("#")[0]) for line in lines if line.strip() and not line.startswith(("#", "-"))
    ]


def test_every_direct_requirement_is_locked_at_a_version_it_allows():
    locked: dict[str, list[Version]] = {}
    for name, version, _ in lock_entries():
        locked.setdefault(name, []).append(version)
    problems = []
    for req in direct_requirements():
        versions = locked.get(canonicalize_name(req.name))
        if not versions:
            problems.append(f"{req} is not in requirements.lock")
        elif not any(req.specifier.contains(v, prereleases=True) for v in versions):
            problems.append(f"{req}: the lock has {', '.join(map(str, versions))}")
    assert not problems, "requirements.txt changed without `make lock`: " + "; ".join(problems)


def test_every_locked_package_has_hashes_and_the_lock_says_how_to_regenerate_it():
    entries = lock_entries()
    assert len(entries) > 100  # the whole environment, not only the direct requirements
    assert [name for name, _, block in entries if "--hash=sha256:" not in block] == []
    assert "make lock" in (REPO / "requirements.lock").read_text().splitlines()[1]
    # `make setup` bootstraps uv from this entry
    assert [name for name, _, _ in entries].count("uv") == 1

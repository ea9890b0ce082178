"""Quality gate: every ``# noqa`` and ``# type: ignore`` names its codes and says why.

ruff and mypy run before the tests (scripts/test.sh) and fail the build; silencing one
of their findings must stay rare and explained. ruff's PGH rules catch blanket ignores
but not a missing reason, hence this scan.
"""

from __future__ import annotations

import io
import re
import tokenize

from tests.reliability._runs import REPO

ROOTS = ("swan_policy", "envs", "tests", "scripts")
# a type-ignore comment with [codes], then another comment with the reason
TYPE_IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^\]]+\])?(?P<rest>.*)$")
# a noqa comment with its codes, then the reason in parentheses or after another hash
NOQA = re.compile(r"#\s*noqa(?P<codes>:\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*)?(?P<rest>.*)$")


def bare_suppressions(source: str, filename: str = "<snippet>") -> list[str]:
    """``file:line: comment`` for each suppression without codes or without a reason."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        text = tok.string
        if re.match(r"#\s*ruff:\s*noqa", text):
            found.append(f"{filename}:{tok.start[0]}: file-level noqa: {text}")
            continue
        for pattern in (TYPE_IGNORE, NOQA):
            m = pattern.search(text)
            if m is None:
                continue
            reason = m.group("rest").strip().lstrip("#").strip()
            if not m.group("codes") or not reason.strip("()"):
                found.append(f"{filename}:{tok.start[0]}: {text}")
    return found


def test_the_scan_flags_bare_suppressions() -> None:
    """Not vacuous: each of these is flagged, the explained forms are not."""
    bad = [
        "x = 1  # type: ignore\n",
        "x = 1  # type: ignore[assignment]\n",
        "import os  # noqa\n",
        "import os  # noqa: F401\n",
        "# ruff: noqa: E402\n",
    ]
    for snippet in bad:
        assert len(bare_suppressions(snippet)) == 1, snippet
    good = (
        "x = 1  # type: ignore[assignment]  # gymnasium types it as Space\n"
        "import os  # noqa: F401  (re-exported)\n"
        "import sys  # noqa: E402  # after the env vars\n"
        "s = '# type: ignore'  # a string, not a comment\n"
    )
    assert bare_suppressions(good) == []


def test_every_suppression_has_codes_and_a_reason() -> None:
    """Issue 9: every noqa / type: ignore in swan_policy/, envs/, tests/, scripts/."""
    files = [p for root in ROOTS for p in sorted((REPO / root).rglob("*.py"))]
    assert len(files) > 50
    found = []
    for path in files:
        found += bare_suppressions(path.read_text(), str(path.relative_to(REPO)))
    assert found == []

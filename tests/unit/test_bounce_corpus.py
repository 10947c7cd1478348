"""The bounce parser scored on real bounce mail (../shared/corpus/bounces, read in place).

For each answer row the recipient at that index is looked up and its status, reply code, reason and
hard/soft compared with the key (bounce.scorecard). The same scores must hold on CR and CRLF copies of
every file. The table is printed in every run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bounce.scorecard import FLOORS, Scorecard, score
from tests.conftest import SHARED


def corpus_dir() -> Path | None:
    """$MAILGW_BOUNCE_CORPUS, else ../shared next to the repository, else the workspace's /work/shared
    (a CI clone elsewhere still scores the parser)."""
    for candidate in (os.environ.get("MAILGW_BOUNCE_CORPUS"), SHARED / "corpus" / "bounces",
                      "/work/shared/corpus/bounces"):
        if candidate and Path(candidate, "answers.json").is_file():
            return Path(candidate)
    return None


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _cr(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r")


ENDINGS: dict[str, Callable[[bytes], bytes]] = {"LF": lambda raw: raw, "CRLF": _crlf, "CR": _cr}


@pytest.fixture(scope="module")
def corpus() -> tuple[dict[str, bytes], list[dict[str, object]]]:
    root = corpus_dir()
    if root is None:
        pytest.skip("no bounce corpus (set MAILGW_BOUNCE_CORPUS to a directory with eml/ and answers.json)")
    answers = json.loads((root / "answers.json").read_text())
    files = {p.name: p.read_bytes() for p in sorted(Path(root, "eml").glob("*.eml"))}
    assert len(files) >= 300 and answers
    return files, answers


def _report(capsys: pytest.CaptureFixture[str], title: str, card: Scorecard) -> None:
    with capsys.disabled():  # shown in every run, not only when the test fails
        print(f"\n== bounce corpus ({title}) ==\n{card.table()}")


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_scores_on_the_corpus(capsys: pytest.CaptureFixture[str], ending: str,
                              corpus: tuple[dict[str, bytes], list[dict[str, object]]]) -> None:
    files, answers = corpus
    convert = ENDINGS[ending]
    card = score({name: convert(raw) for name, raw in files.items()}, answers)
    _report(capsys, f"{ending} line ends", card)
    assert card.rows >= 400
    for metric, floor in FLOORS.items():
        assert card.pct(metric) >= floor, f"{metric} {card.pct(metric):.1f}% < {floor}%\n{card.table()}"
    assert card.negatives >= 3
    assert card.false_positives == [], "ordinary mail taken for a bounce"


def test_the_same_answers_whatever_the_line_ends(
        corpus: tuple[dict[str, bytes], list[dict[str, object]]]) -> None:
    from bounce.dsn import parse

    files, _ = corpus
    for name, raw in files.items():
        lf = parse(raw).to_dict()
        assert parse(_crlf(raw)).to_dict() == lf, name
        assert parse(_cr(raw)).to_dict() == lf, name

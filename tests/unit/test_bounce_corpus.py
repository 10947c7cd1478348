"""The bounce parser scored on real bounce mail (a corpus the repository does not ship, read in place: see
`tests.conftest.bounce_corpus`; without one these tests skip and say how to provide it).

For each answer row the recipient at that index is looked up and its status, reply code, reason and
hard/soft compared with the key (bounce.scorecard). The same scores must hold on CR and CRLF copies of
every file. The table is printed in every run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bounce.scorecard import FLOORS, Scorecard, score
from tests.conftest import BOUNCE_CORPUS_HINT, bounce_corpus


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _cr(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r")


ENDINGS: dict[str, Callable[[bytes], bytes]] = {"LF": lambda raw: raw, "CRLF": _crlf, "CR": _cr}


@pytest.fixture(scope="module")
def corpus() -> tuple[dict[str, bytes], list[dict[str, object]]]:
    root = bounce_corpus()
    if root is None:
        pytest.skip(f"no bounce corpus: {BOUNCE_CORPUS_HINT}")
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

"""The repository explains itself: no path of one particular machine, no document a user does not have, and
the layout in docs/design.md names files that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False)
    names = out.stdout.splitlines() if out.returncode == 0 else [
        str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".venv" not in p.parts]
    return [REPO / n for n in names if n.endswith((".py", ".md", ".yaml", ".service", ".conf", ".toml"))
            or n in ("run",)]


def machine_paths() -> list[str]:
    """Absolute paths of the machine this runs on that a file must not name: this checkout, the shared folder a
    development workspace keeps beside it, and the home directory. Taken from the running machine, not written
    down: a user's machine has other ones."""
    places = {REPO, REPO.parent / "shared", Path.home()}
    return sorted(f"{p}/" for p in places if len(p.parts) > 1)


def test_no_machine_path_and_no_document_a_user_lacks() -> None:
    banned = re.compile("|".join([*map(re.escape, machine_paths()),
                                  r"shared workspace|design card|gateway-spec|api-contract|routing-cases"]))
    offenders = []
    for path in tracked_text_files():
        if path.name == "test_docs.py" or not path.exists():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if banned.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    assert offenders == []


def test_docs_mention_shared_only_as_an_optional_place() -> None:
    """../shared (the development workspace) may be named as one place to put optional data, never as a
    document to read."""
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "../shared/odoo" not in text and "shared/corpus" not in text, path


def test_design_layout_lists_only_files_that_exist() -> None:
    text = (REPO / "docs" / "design.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    missing = []
    directory = base = REPO
    for line in block.splitlines():
        top = re.match(r"^(\S+/)\s", line)
        if top:
            directory = REPO / top.group(1)
            if not directory.is_dir():
                missing.append(top.group(1))
            continue
        sub = re.match(r"^  (\w+)/\s", line)
        if sub:
            base = directory / sub.group(1)
            if not base.is_dir():
                missing.append(str(base.relative_to(REPO)))
        elif not line.startswith("    "):  # a continuation line keeps the directory of the line above
            base = directory
        for name in re.findall(r"\b([\w]+\.py)\b", line):
            if not (base / name).exists() and not (directory / name).exists():
                missing.append(f"{base.relative_to(REPO)}/{name}")
    assert missing == []

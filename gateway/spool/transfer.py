"""Moving entries between spools: SQLite -> PostgreSQL when a gateway scales out, and back.

Entries keep their queue ids (a VERP token in a bounce names the outbound entry it answers), every column and
the raw bytes; claims are cleared (whoever held them is stopped). Copying is idempotent: an entry whose queue
id, or ledger key, is already in the target is skipped, so an interrupted move is simply run again.

The export format is JSON Lines: a header object, then one object per entry with its columns and the raw
message in base64. It is what `mailgw spool export` writes and `mailgw spool import` reads.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO

from gateway.spool.base import EXPORT_COLUMNS, ExportRow, Spool, SpoolError

FORMAT = "mailgw-spool-export"
VERSION = 1
BATCH = 200


@dataclass
class TransferReport:
    added: int = 0
    skipped: int = 0  # already in the target (same queue id or ledger key)
    claimed: int = 0  # entries that were claimed in the source: was its gateway still running?

    def add(self, rows: Sequence[ExportRow], stored: Sequence[bool]) -> None:
        for (row, _raw), ok in zip(rows, stored, strict=True):
            self.added += ok
            self.skipped += not ok
            self.claimed += row.get("claimed_by") is not None


async def pages(src: Spool, size: int = BATCH) -> AsyncIterator[Sequence[ExportRow]]:
    """Every entry of `src` in queue id order, `size` at a time."""
    after = ""
    while rows := await src.export_rows(after, size):
        yield rows
        after = rows[-1][0]["queue_id"]


async def copy_entries(src: Spool, dst: Spool, *, size: int = BATCH,
                       progress: Callable[[TransferReport], None] | None = None) -> TransferReport:
    report = TransferReport()
    async for rows in pages(src, size):
        report.add(rows, await dst.import_rows(rows))
        if progress is not None:
            progress(report)
    return report


async def write_export(src: Spool, out: IO[str], *, size: int = BATCH) -> int:
    out.write(json.dumps({"format": FORMAT, "version": VERSION, "columns": list(EXPORT_COLUMNS)}) + "\n")
    count = 0
    async for rows in pages(src, size):
        for row, raw in rows:
            out.write(json.dumps({"entry": row, "raw": base64.b64encode(raw).decode("ascii")}) + "\n")
        count += len(rows)
    return count


def _parse(lines: Iterable[str]) -> Iterable[ExportRow]:
    it = iter(lines)
    try:
        header = json.loads(next(it))
    except (StopIteration, ValueError) as exc:
        raise SpoolError("not a mailgw spool export (no header line)") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SpoolError("not a mailgw spool export (unknown header)")
    if header.get("version") != VERSION:
        raise SpoolError(f"spool export version {header.get('version')} is not supported (this mailgw reads "
                         f"{VERSION})")
    unknown = set(header.get("columns") or ()) - set(EXPORT_COLUMNS)
    if unknown:
        raise SpoolError(f"the export has columns this mailgw does not know: {', '.join(sorted(unknown))}")
    for n, line in enumerate(it, start=2):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            yield obj["entry"], base64.b64decode(obj["raw"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"line {n}: not an exported entry ({exc})") from exc


async def read_export(lines: Iterable[str], dst: Spool, *, size: int = BATCH) -> TransferReport:
    report = TransferReport()
    chunk: list[ExportRow] = []
    for row in _parse(lines):
        chunk.append(row)
        if len(chunk) >= size:
            report.add(chunk, await dst.import_rows(chunk))
            chunk = []
    if chunk:
        report.add(chunk, await dst.import_rows(chunk))
    return report

"""SQLite spool: WAL, synchronous=FULL, one writer thread that groups commits.

Why a writer thread: with synchronous=FULL every COMMIT is an fsync. Twenty SMTP sessions committing one
by one would serialise on fsync; instead every write is queued to one thread that takes all writes waiting
at that moment and commits them together — one fsync per batch (group commit); one failing write does not
undo the others (the rows of all puts are inserted together, other writes get a SAVEPOINT each when they share
the transaction; see `GroupCommitWriter._commit`). Callers get their result only after that COMMIT returned,
which is what lets the SMTP layer say 250 only for mail that is on disk.

Reads run on their own connection in a small thread pool; WAL keeps them from blocking the writer. Another
process (`mailgw pipe`) may write to the same file; SQLite's lock plus busy_timeout arbitrates.

schema.py holds the file's schema, migrations and connections, writer.py the writer thread, spool.py `SqliteSpool`.
"""

from gateway.spool.sqlite.schema import FIRST_SCHEMA_VERSION, SCHEMA, connect
from gateway.spool.sqlite.spool import SqliteSpool

__all__ = ["FIRST_SCHEMA_VERSION", "SCHEMA", "SqliteSpool", "connect"]

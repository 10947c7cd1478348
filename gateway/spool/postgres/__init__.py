"""The PostgreSQL spool (scale-out): several gateways share one queue. See spool.py and docs/scale-out.md.

Needs asyncpg (`pip install 'mailgw[postgres]'`); imported only when the config says `backend: postgres`.
"""

from gateway.spool.postgres.spool import PostgresSpool

__all__ = ["PostgresSpool"]

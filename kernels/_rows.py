"""``run_rows``, the way the row kernels run: see ``_threads.py`` (the threading policy)."""
from ._threads import run_rows

__all__ = ["run_rows"]

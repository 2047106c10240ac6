"""``python -m storage.lite_server server ...``: Milvus Lite's own command line with storage.lite_patch applied.

storage/lite_process.py starts this instead of ``python -m milvus_lite`` so the server child gets the
faster MemTable flush and exits with the process that started it (``OTAD_LITE_PARENT_PID``); arguments
and behaviour are otherwise milvus_lite's.
"""

from __future__ import annotations

import os

from milvus_lite.cmdline import main

from storage import lite_patch
from storage.lite_process import NICE_ENV, PARENT_ENV, exit_with_parent

if __name__ == "__main__":
    if os.environ.get(PARENT_ENV):
        exit_with_parent(int(os.environ.pop(PARENT_ENV)))
    if int(os.environ.get(NICE_ENV) or 0):
        os.nice(int(os.environ[NICE_ENV]))
    lite_patch.apply()
    raise SystemExit(main())

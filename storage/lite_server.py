"""``python -m storage.lite_server server ...``: Milvus Lite's own command line with storage.lite_patch applied.

storage/lite_process.py starts this instead of ``python -m milvus_lite`` so the server child gets the
faster MemTable flush; arguments and behaviour are otherwise milvus_lite's.
"""

from __future__ import annotations

from milvus_lite.cmdline import main

from storage import lite_patch

if __name__ == "__main__":
    lite_patch.apply()
    raise SystemExit(main())

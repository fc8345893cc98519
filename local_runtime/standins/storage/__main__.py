"""``python -m local_runtime.standins.storage``: run the Storage stand-in until SIGTERM."""

from __future__ import annotations

from local_runtime.standins.storage.server import main

if __name__ == "__main__":
    main()

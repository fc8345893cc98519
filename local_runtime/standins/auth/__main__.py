"""``python -m local_runtime.standins.auth``: run the Auth stand-in until SIGTERM."""

from __future__ import annotations

from local_runtime.standins.auth.server import main

if __name__ == "__main__":
    main()

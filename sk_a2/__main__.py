"""``python -m sk_a2``: the ``sk-a2`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

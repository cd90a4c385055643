"""``python -m undertow.cli``: the ``undertow`` command."""

from undertow.cli import main

if __name__ == "__main__":
    main()

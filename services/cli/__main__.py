"""``python -m services.cli``: the ``twotier`` command of this interpreter."""

from services.cli import main

if __name__ == "__main__":
    main()

"""`python -m gazekit ...`: see `gazekit.cli`."""
from gazekit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

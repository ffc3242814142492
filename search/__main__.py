"""`python -m search ...`: the same command line as `visual-search ...` (search/cli.py)."""
from search.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m hs_model ...`: see hs_model/cli.py."""

from hs_model.cli import main

raise SystemExit(main())

"""``python -m textgen`` (and ``torchrun -m textgen``) runs the CLI."""

from textgen.cli import main

raise SystemExit(main())

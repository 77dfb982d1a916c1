"""`python -m fluxmq ...` is the same as the `fluxmq` command."""

from fluxmq.cli import main

raise SystemExit(main())

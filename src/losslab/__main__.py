"""``python -m losslab`` runs the command-line tool."""

from losslab.cli import main

raise SystemExit(main())

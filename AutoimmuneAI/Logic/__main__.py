"""``python -m autoimmuneai`` runs the command line (used by the Slicer module's background runs)."""

from .cli import main

raise SystemExit(main())

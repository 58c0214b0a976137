"""``python -m honestface_core.cli``: the same as the ``honestface`` command."""
from honestface_core.cli.main import main

raise SystemExit(main())

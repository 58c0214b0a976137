"""The ``honestface`` command line (``main``) and its subcommands: restore, evaluate, bench, bench-pasteback and the
device check."""

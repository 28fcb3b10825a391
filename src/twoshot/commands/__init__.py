"""One module per ``twoshot`` subcommand (see :mod:`twoshot.cli`)."""

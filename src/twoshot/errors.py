"""The one exception type for problems a user can fix (bad files, bad arguments).

The command line catches :class:`UserError` and prints its message with a non-zero exit,
so every message must name the file or option at fault and say what is wrong.
"""


class UserError(Exception):
    """A problem with the user's input: its message is shown as is, without a traceback."""

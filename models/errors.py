"""One exception type for bad input, shared by every layer.

The command line turns a `UserError` into one line on stderr and exit code 2, with no
traceback. Its message names the problem and the fix.
"""


class UserError(ValueError):
    """Bad input from the user: a config, a path, a file, an argument."""

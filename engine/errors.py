import sys


class UserError(Exception):
    """An error caused by the user's input (a path, a key, a value).

    ``train.py`` catches it once and prints its message as one line, without a traceback.
    """


def exit_on_user_error(fn, *args, **kwargs):
    """Run a command-line entry point; a ``UserError`` becomes one ``error:`` line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

class UserError(Exception):
    """An error caused by the user's input (a path, a key, a value).

    ``train.py`` catches it once and prints its message as one line, without a traceback.
    """

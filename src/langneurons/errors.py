"""Errors a user can fix. Entry points print them as one line, without a traceback."""


class HarnessError(Exception):
    """A problem with the user's input (config, paths, model ids, data), not a bug.

    The message is one line that names the offending thing and says how to fix it.
    """


class UnknownLanguageError(HarnessError, ValueError):
    pass


class ModelLoadError(HarnessError):
    pass


class DataError(HarnessError):
    pass

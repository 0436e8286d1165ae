"""Errors that the command line answers with exit status 2 and one ``error:`` line."""


class BadInput(ValueError):
    """The user gave something we cannot work with (bad config value, unknown model, malformed file).

    The message must say what is wrong and how to fix it; the CLI prints it as ``error: <message>``.
    """

"""The one exception type for "the user gave us something we can't use"."""


class UserError(ValueError):
    """Bad input, said as a sentence: what is wrong, where, and what to do. CLI exit code 2."""

"""User-facing input errors of the model layer (shown as one clear line, never a traceback)."""


class InputError(ValueError):
    """Input the model cannot use, with the reason in plain words."""

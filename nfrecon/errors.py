"""The one error type that users see: a one-line message about their input."""


class InputError(ValueError):
    """Bad input (file, shape, value, config). The CLI prints ``error: <message>`` and exits 2.

    Messages are one line and name the offending file or field.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))

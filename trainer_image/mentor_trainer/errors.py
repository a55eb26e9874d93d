"""The one error type stages raise for problems they can explain."""


class StageError(Exception):
    """A failure with a message that names its cause (file, field, URI).

    permanent=True means retrying cannot help (bad config, missing or empty input): the
    trainer exits with code 2 and the Job's podFailurePolicy fails at once."""

    def __init__(self, message: str, permanent: bool = True):
        super().__init__(message)
        self.permanent = permanent

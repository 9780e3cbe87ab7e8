"""The one exception type for mistakes a user can cause (bad file, no face, silent audio)."""


class HeadsplatError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""

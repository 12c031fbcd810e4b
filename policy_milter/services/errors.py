"""The one way a service reports that it could not answer."""


class DependencyError(Exception):
    """A service could not answer.  ``entry`` names the catalogue reply for tempfail."""

    def __init__(self, service: str, message: str, entry: str = "state_tempfail") -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.message = message
        self.entry = entry

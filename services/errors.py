"""Errors raised by service functions; their messages are safe to show to the signed-in user."""


class ServiceError(Exception):
    """A refusal or failure whose message can be shown to the user as is."""


class PermissionDenied(ServiceError):
    """The caller is not signed in, or their role may not do this."""


class NotFound(ServiceError):
    """The thing asked for does not exist."""


class InvalidInput(ServiceError):
    """The request is malformed or not allowed in the item's current state."""

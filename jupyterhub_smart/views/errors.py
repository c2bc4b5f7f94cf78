"""Errors of the ViewDefinition engine.

Both name the offending element path of the view (``select[0].column[2].path``)
so that a user can find the problem in a long JSON document.
"""

from __future__ import annotations


class ViewDefinitionError(ValueError):
    """The view is invalid; raised by :func:`compile_view` before any resource is read.

    ``element`` is the element path inside the view (``""`` for the view itself).
    """

    def __init__(self, element: str, message: str) -> None:
        self.element = element
        self.detail = message
        super().__init__(f"{element}: {message}" if element else message)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Picklable with its two arguments (it crosses process boundaries in ``view run --jobs``)."""
        return (type(self), (self.element, self.detail))


class ViewEvaluationError(ViewDefinitionError):
    """The view cannot describe a resource it was run on, and the spec says that is an error.

    Two situations, both named by the specification: a column without
    ``collection: true`` whose path yields several values, and a ``where`` path
    that yields something other than a boolean. It is a subclass of
    :class:`ViewDefinitionError` because the remedy is to fix the view.
    """

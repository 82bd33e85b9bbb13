"""The errors the library raises: each says what failed and carries a hint for what to do next.

The CLI turns them into ``Error: …`` / ``Hint: …`` lines on stderr and exit code 1 (see
``cli/_app.py``); nothing in the library prints or exits.
"""

from __future__ import annotations


class Llama3zhError(Exception):
    """Base class: ``str(err)`` is the one-line message, ``err.hint`` the next step (or None)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(Llama3zhError):
    """Options that conflict or are out of range, checked before any heavy work."""


class ModelNotFoundError(Llama3zhError):
    """An alias, repo or file that is not known or not on disk."""


class InvalidModelError(Llama3zhError):
    """A file that exists but is not a usable model (not GGUF, truncated, wrong architecture)."""


class ChatTemplateError(Llama3zhError):
    """A chat template that cannot be rendered safely."""


class BackendError(Llama3zhError):
    """llama.cpp refused or failed (load, context creation, decode)."""


class InputError(Llama3zhError):
    """Bad user input to a command (empty prompt, unreadable file)."""


class NetworkError(Llama3zhError):
    """A hub could not be reached, or the connection kept failing."""

    unreachable = False  # True: no connection at all (rather than an HTTP error from the hub)


class HubAccessError(Llama3zhError):
    """A hub refused access: a gated or private repo without a (valid) token."""


class IntegrityError(Llama3zhError):
    """A downloaded file does not match the checksum or size the hub published."""


class DiskSpaceError(Llama3zhError):
    """Not enough free disk space, checked before downloading or hit while writing."""


class UnsafePathError(Llama3zhError):
    """A hub file name that would be written outside its target folder (``../``, absolute)."""


class OllamaError(Llama3zhError):
    """No Ollama server answers, it is too old, or it refused the request."""


class DataError(UsageError):
    """Training data that cannot be used: unreadable, malformed, or not a conversation; the
    message names the file and line."""


class MissingExtraError(UsageError):
    """An optional extra (``[train]``, ``[qlora]``, DeepSpeed) that a command needs is not
    installed; the message names it and the install command."""

"""Errors a user can cause. Each carries one clear, human-readable message.

The CLI prints ``str(error)`` and exits non-zero; the GUI shows it in one dialog. Anything that is
*not* a :class:`CellPolError` is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any, Optional


class CellPolError(Exception):
    """Base class for problems with the user's input, files or environment.

    The message names what to change in words ("choose the CPU as the device"), never a command-line flag
    or a widget: ``settings`` names the settings it asks to change, with the value to give where there is
    one (``{"device": "cpu"}``; ``None``: a value of the user's), and each front end adds how to set them
    (the CLI its flags, the window its fields).
    """

    settings: dict[str, Any] = {}

    def __init__(self, *args: Any, settings: Optional[dict[str, Any]] = None) -> None:
        super().__init__(*args)
        if settings:
            self.settings = dict(settings)


class FileFormatError(CellPolError):
    """A file is missing, unreadable, corrupt, truncated or not in a supported layout."""


class MissingVoxelSizeError(CellPolError):
    """The image carries no voxel size and the caller gave none.

    The GUI catches this to ask the user; the CLI tells them how to give it.
    """

    def __init__(self, path: str, detail: str = "") -> None:
        self.path = str(path)
        message = (
            f"{self.path}: no voxel size found in the file's metadata{detail}. "
            "Give the voxel size (z, y, x in µm)."
        )
        super().__init__(message, settings={"voxel_size": None})


class ChannelError(CellPolError):
    """A requested channel does not exist or the channel roles are inconsistent."""


class CancelledError(CellPolError):
    """A long job was cancelled by the user."""


class OutputError(CellPolError, OSError):
    """A result cannot be written: full disk, no permission, read-only folder, a file or folder in the way.

    Also an ``OSError`` (with ``errno`` and ``filename``), so code that handles write failures as such
    (the autosave) keeps working; ``str()`` is the one clear message.
    """

    def __init__(self, message: str, errno_: Optional[int] = None, filename: Optional[str] = None) -> None:
        OSError.__init__(self, message)
        self.errno = errno_
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

"""Error classes a caller can catch; each also inherits the matching builtin."""

__all__ = [
    "ConfigError",
    "MissingMppError",
    "SlideError",
    "SlideNotFoundError",
    "SlideReadError",
    "UnipipeError",
    "UnsupportedSlideError",
]


class UnipipeError(Exception):
    """Base of every error unipipe raises on purpose."""


class ConfigError(UnipipeError, ValueError):
    """A config value or manifest entry is invalid; the message names the key and the fix."""


class SlideError(UnipipeError, ValueError):
    """A slide cannot be used; the message names the slide and the fix."""


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The manifest points at a path that does not exist."""


class UnsupportedSlideError(SlideError):
    """No reader (OpenSlide, tifffile, pydicom) can open the file as a brightfield RGB slide."""


class MissingMppError(SlideError):
    """The slide has no microns-per-pixel metadata and the manifest gives none."""


class SlideReadError(SlideError):
    """The slide opened but a region of it cannot be decoded (a damaged file)."""

"""Reading whole-slide images by microns per pixel, whatever the file format."""

from unipipe.slide.base import Slide
from unipipe.slide.open import READERS, open_slide

__all__ = ["READERS", "Slide", "open_slide"]

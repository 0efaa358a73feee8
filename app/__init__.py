"""CellPol Studio: nucleus-to-Golgi polarity in 3D microscopy."""

__version__ = "0.1.0"

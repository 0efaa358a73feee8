"""Desktop user interface (PySide6, VTK, pyqtgraph). Imports core/training; nothing imports ui."""

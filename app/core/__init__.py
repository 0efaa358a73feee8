"""Pure computation: data model, file formats, simulation, scoring, inference.

Nothing in this package imports Qt, VTK or pyqtgraph (a test enforces it).
"""

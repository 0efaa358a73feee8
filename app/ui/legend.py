"""The legend in the free corner of the slice views: what the overlay colours and marks mean."""

from __future__ import annotations

from typing import Optional

from PySide6 import QtCore, QtWidgets

from app.ui.display import EVALUATION_COLOURS, SOURCE_COLOURS, score_colour
from app.ui.state import ViewerState


def _swatch(rgb, text: str) -> str:
    return f"<span style='color: rgb{tuple(rgb)}'>■</span> {text}"


class Legend(QtWidgets.QLabel):
    """What the overlay colours and marks mean; follows the colour mode (by source, or TP/FP/FN).

    Parameters
    ----------
    state : ViewerState
        Its ``overlay_changed`` signal refreshes the legend.
    parent : QWidget, optional
    """

    def __init__(self, state: ViewerState, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.state = state
        self.setAlignment(QtCore.Qt.AlignmentFlag.AlignTop | QtCore.Qt.AlignmentFlag.AlignLeft)
        self.setWordWrap(True)
        self.setStyleSheet("background: #1b1b1f; color: #ddd; padding: 6px;")
        state.overlay_changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        """Show the colours of the current colour mode."""
        if self.state.colour_mode == "evaluation":
            items = [_swatch(EVALUATION_COLOURS[k], k) for k in ("TP", "FP", "FN", "border")]
        elif self.state.colour_mode == "score":
            items = [_swatch(score_colour(v), f"score {v:g}") for v in (0.0, 0.5, 1.0)]
            items += [_swatch(SOURCE_COLOURS[k], k) for k in ("manual", "corrected")]
            if self.state.score_threshold > 0:
                items.append(f"predictions below {self.state.score_threshold:.2f} hidden")
        else:
            items = [_swatch(SOURCE_COLOURS[k], k) for k in ("manual", "predicted", "corrected", "imported")]
        self.setText("<b>Vectors</b><br>" + "&nbsp; ".join(items) +
                     "<br>○ nucleus &nbsp; ◆ Golgi &nbsp; + nucleus waiting for its Golgi<br>"
                     "<span style='color:#999'>smaller = farther from the slice</span>")

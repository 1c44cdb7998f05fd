"""A tiny live loss curve, painted with QPainter (no matplotlib)."""

from __future__ import annotations

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossCurve"]


class LossCurve(QWidget):
    """Per-step loss (thin, light) and its running mean (thick), steps on x.

    ``add(step, loss, smoothed)`` appends a point and repaints; ``clear()``
    starts over; ``set_total(steps)`` fixes the x range.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.total = 0
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("Training loss per step (light) and its 10-step mean (bold)")

    def sizeHint(self) -> QSize:
        return QSize(260, 120)

    def clear(self) -> None:
        self.steps, self.losses, self.smoothed = [], [], []
        self.update()

    def set_total(self, total: int) -> None:
        self.total = int(total)
        self.update()

    def add(self, step: int, loss: float, smoothed: float | None = None) -> None:
        self.steps.append(int(step))
        self.losses.append(float(loss))
        self.smoothed.append(float(loss if smoothed is None else smoothed))
        self.update()

    def _path(self, values, box: QRectF, x_max: float, y_min: float, y_max: float) -> QPainterPath:
        path = QPainterPath()
        span = (y_max - y_min) or 1.0
        for k, (step, value) in enumerate(zip(self.steps, values)):
            point = QPointF(box.left() + box.width() * step / x_max, box.bottom() - box.height() * (value - y_min) / span)
            path.moveTo(point) if k == 0 else path.lineTo(point)
        return path

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().color(self.foregroundRole())
        metrics = painter.fontMetrics()
        left = metrics.horizontalAdvance("0.000") + 6
        box = QRectF(left, 6, max(1, self.width() - left - 8), max(1, self.height() - metrics.height() - 14))
        faint = QColor(text)
        faint.setAlpha(90)
        painter.setPen(QPen(faint, 1))
        painter.drawRect(box)
        if not self.losses:
            painter.setPen(text)
            painter.drawText(box, Qt.AlignmentFlag.AlignCenter, "loss curve")
            painter.end()
            return
        finite = [v for v in self.losses + self.smoothed if v == v and abs(v) != float("inf")]
        y_min, y_max = (min(finite), max(finite)) if finite else (0.0, 1.0)
        x_max = float(max(self.total, self.steps[-1], 1))
        painter.setPen(QPen(QColor(110, 160, 230, 140), 1))
        painter.drawPath(self._path(self.losses, box, x_max, y_min, y_max))
        painter.setPen(QPen(QColor(250, 170, 40), 2))
        painter.drawPath(self._path(self.smoothed, box, x_max, y_min, y_max))
        painter.setPen(text)
        painter.drawText(QPointF(2, box.top() + metrics.ascent()), f"{y_max:.3f}")
        painter.drawText(QPointF(2, box.bottom()), f"{y_min:.3f}")
        painter.drawText(
            QRectF(box.left(), box.bottom() + 2, box.width(), metrics.height() + 4),
            Qt.AlignmentFlag.AlignRight,
            f"step {self.steps[-1]} / {int(x_max)}   loss {self.smoothed[-1]:.3f}",
        )
        painter.end()

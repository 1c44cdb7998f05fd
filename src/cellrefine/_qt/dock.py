"""The common base of the CellRefine docks, and making them fit a laptop screen.

* :class:`Panel`: the viewer and its session, the panel's jobs and napari
  connections (stopped and undone when the dock or the viewer closes);
* :func:`scrolling` puts a widget's sections in a vertical scroll area, so a
  dock never forces the main window to grow past the screen;
* :func:`tabify_with_siblings` puts a CellRefine dock in the same tab group
  as the other CellRefine dock already open in the window (napari's Plugins
  menu would otherwise stack them).
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QVBoxLayout, QWidget

__all__ = ["Panel", "scrolling", "tabify_with_siblings", "MINIMUM_HEIGHT", "DOCK_PROPERTY"]

MINIMUM_HEIGHT = 260  # px: below this a dock is too small to use
DOCK_PROPERTY = "cellrefine_dock"


def scrolling(widget: QWidget, sections: list) -> QScrollArea:
    """Lay out ``sections`` (widgets) top to bottom inside a vertical scroll area filling ``widget``."""
    content = QWidget()
    layout = QVBoxLayout(content)
    for section in sections:
        layout.addWidget(section)
    layout.addStretch(1)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(content)
    _KeepWideEnough(scroll, content)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    widget.setMinimumHeight(MINIMUM_HEIGHT)
    widget.setProperty(DOCK_PROPERTY, True)
    return scroll


class _KeepWideEnough(QObject):
    """Keeps the scroll area at least as wide as its content's minimum plus a scroll bar,
    so a vertical scroll bar appearing (or longer texts) never clips the content's right edge."""

    def __init__(self, scroll: QScrollArea, content: QWidget):
        super().__init__(scroll)
        self._scroll, self._content = scroll, content
        content.installEventFilter(self)
        self._update()

    def _update(self) -> None:
        scrollbar = self._scroll.verticalScrollBar().sizeHint().width()
        self._scroll.setMinimumWidth(self._content.minimumSizeHint().width() + scrollbar + 2)

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.LayoutRequest:
            self._update()
        return False


def _dock_of(widget: QWidget):
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def tabify(widget: QWidget) -> bool:
    """Tab ``widget``'s dock with another visible CellRefine dock in the same window and area; True if done."""
    dock = _dock_of(widget)
    window = dock.parentWidget() if dock is not None else None
    if dock is None or not isinstance(window, QMainWindow) or dock.isFloating():
        return False
    area = window.dockWidgetArea(dock)
    for other in window.findChildren(QDockWidget):
        inner = other.widget()
        if other is dock or inner is None or other.isFloating() or not other.isVisible():
            continue
        if window.dockWidgetArea(other) != area or not inner.property(DOCK_PROPERTY):
            continue
        if dock in window.tabifiedDockWidgets(other):
            return True
        window.tabifyDockWidget(other, dock)
        dock.raise_()
        return True
    return False


class _TabifyOnShow(QObject):
    def __init__(self, widget: QWidget):
        super().__init__(widget)
        self._done = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._tabify)
        widget.installEventFilter(self)

    def _tabify(self) -> None:
        widget = self.parent()
        if widget is not None and not self._done:
            self._done = tabify(widget)

    def eventFilter(self, watched, event) -> bool:
        if not self._done and event.type() == QEvent.Type.Show and watched is self.parent():
            self._timer.start()
        return False


def tabify_with_siblings(widget: QWidget) -> None:
    """When ``widget`` is first shown in a dock, tab it with the other CellRefine dock (see :func:`tabify`)."""
    _TabifyOnShow(widget)


class Panel(QWidget):
    """Base of the Segment and Fine-tune docks.

    Attributes
    ----------
    viewer : napari.Viewer
        The viewer itself (napari may hand widgets a proxy of it).
    session : Session
        The viewer's shared CellRefine state.
    jobs : JobSet
        The panel's background jobs.
    events : EventConnections
        The panel's napari event connections.

    Both are closed when the dock is removed or the viewer closes.
    """

    def __init__(self, napari_viewer):
        from .job_controls import EventConnections, stop_on_close
        from .session import get_session, unwrap_viewer
        from .workers import JobSet

        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(self.viewer)
        self.jobs = JobSet()
        self.events = EventConnections()
        self._closing = stop_on_close(self, self.jobs, self.events)

    def set_sections(self, sections: list) -> None:
        """Lay out the panel: ``sections`` in a scroll area; tabbed with the other CellRefine dock once shown."""
        scrolling(self, sections)
        tabify_with_siblings(self)

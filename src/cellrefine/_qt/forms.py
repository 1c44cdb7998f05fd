"""Parameter forms of the widgets, built with magicgui from a list of fields."""

from __future__ import annotations

import dataclasses

from magicgui.widgets import Container, create_widget

__all__ = ["Field", "build_form", "device_field"]


@dataclasses.dataclass
class Field:
    """One row of a form: a magicgui widget made by ``magicgui.widgets.create_widget``.

    ``options`` go to the widget (``min``, ``max``, ``step``, ``choices``...);
    ``tooltip`` is shown on hover.
    """

    name: str
    label: str
    value: object
    annotation: type | None = None
    widget_type: str | None = None
    options: dict = dataclasses.field(default_factory=dict)
    tooltip: str = ""


def build_form(fields: list[Field]) -> Container:
    """A labelled magicgui ``Container`` with one widget per field (``form.<name>``)."""
    widgets = []
    for field in fields:
        options = {**field.options, "tooltip": field.tooltip} if field.tooltip else dict(field.options)
        widgets.append(
            create_widget(
                value=field.value, name=field.name, label=field.label, annotation=field.annotation, widget_type=field.widget_type, options=options
            )
        )
    form = Container(widgets=widgets, labels=True)
    form.margins = (0, 0, 0, 0)
    return form


def device_field() -> Field:
    """The device choice: ``auto`` / ``cpu`` / ``cuda`` / ``mps``."""
    from ..device import DEVICES

    return Field(
        "device",
        "Device",
        "auto",
        str,
        "ComboBox",
        {"choices": list(DEVICES)},
        "Where the network runs; 'auto' picks CUDA, then Apple MPS, then the CPU.",
    )


def disable_unavailable_devices(combo) -> None:
    """Grey out the devices of a :func:`device_field` combo that this machine does not have."""
    from ..device import DEVICES

    try:
        import torch

        available = {"auto": True, "cpu": True, "cuda": torch.cuda.is_available()}
        mps = getattr(torch.backends, "mps", None)
        available["mps"] = bool(mps is not None and mps.is_available())
    except ImportError:  # torch missing: the error on Run explains
        available = dict.fromkeys(DEVICES, True)
    model = combo.native.model()
    for index, name in enumerate(DEVICES):
        if not available.get(name, True):
            item = model.item(index)
            item.setEnabled(False)
            item.setToolTip(f"{name} is not available on this machine")

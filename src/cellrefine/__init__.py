"""CellRefine: U-Net segmentation of cells and nuclei that you fine-tune from your own corrections.

Public API (pure Python/NumPy/PyTorch; no Qt, napari or magicgui is imported,
and torch is imported only when a function needs it)::

    import cellrefine as cr
    model = cr.load_model()                 # bundled nuclei model (or a saved path)
    seg = cr.segment(image, model=model)    # seg.semantic, seg.instances, seg.probabilities
    tuned = cr.finetune(model, [image], [labels], masks=[reviewed_mask])
    tuned.save("my_model.safetensors")
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "cellrefine.model.io": ("load_model", "Model", "ModelFileError"),
    "cellrefine.inference": ("segment", "iter_segment", "Segmentation", "SegmentProgress", "SegmentationCancelled"),
    "cellrefine.postprocess": ("PostprocessSettings",),
    "cellrefine.normalize": ("BlankImageWarning",),
    "cellrefine.axes": ("AxesGuessWarning",),
    "cellrefine.uncertainty": ("rank_objects",),
    "cellrefine.training": ("finetune", "iter_finetune", "FinetuneUpdate", "TrainSettings", "FinetuneSettings", "finetune_summary"),
}
#: public name -> (module, attribute or None for the module itself), imported on first use
_LAZY = {name: (module, name) for module, names in _EXPORTS.items() for name in names} | {
    "metrics": ("cellrefine.metrics", None),
    "uncertainty": ("cellrefine.uncertainty", None),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'cellrefine' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)

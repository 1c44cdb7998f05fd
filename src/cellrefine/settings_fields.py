"""Settings dataclasses that name an unknown field and suggest the right one.

A dataclass called with a keyword that is not one of its fields raises
Python's ``__init__() got an unexpected keyword argument 'learnng_rate'``,
which names neither the settings nor the valid fields. :func:`reject_unknown_fields`
makes the class answer instead::

    TypeError: unknown fine-tuning setting 'learnng_rate' (did you mean 'learning_rate'?);
    the TrainSettings fields are: steps, batch_size, ...

It covers every way a settings object is built: the class itself, a dict
of settings passed as ``**mapping``, and :func:`dataclasses.replace` (which
calls the class), hence ``finetune(..., **overrides)`` and
``probabilities_to_instances(..., **overrides)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools

__all__ = ["reject_unknown_fields", "unknown_fields_message"]


def unknown_fields_message(what: str, owner: str, unknown, known) -> str:
    """The error message for the ``unknown`` setting names of ``owner`` (a class name), with the closest known names.

    Parameters
    ----------
    what : str
        What the settings are about, in words (e.g. ``"fine-tuning"``).
    owner : str
        The settings class's name.
    unknown : iterable of str
    known : sequence of str
        The valid field names, in their documented order.

    Examples
    --------
    >>> unknown_fields_message("post-processing", "Thresholds", ["foregrond"], ["foreground", "min_size"])
    "unknown post-processing setting 'foregrond' (did you mean 'foreground'?); the Thresholds fields are: foreground, min_size."
    """
    known = list(known)
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        if not close:  # a prefix or a part of a name ("foreground" for "foreground_threshold") is a likely slip too
            close = [field for field in known if str(name).lower() in field][:1]
        parts.append(f"{str(name)!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(parts) > 1 else ""
    return f"unknown {what} setting{plural} {', '.join(parts)}; the {owner} fields are: {', '.join(known)}."


def reject_unknown_fields(what: str):
    """Class decorator for a settings dataclass: unknown keyword arguments raise a TypeError naming them.

    Apply it above ``@dataclasses.dataclass``. The error lists every unknown
    name with its closest field (:func:`unknown_fields_message`); known
    fields go to the dataclass's own ``__init__`` unchanged.

    Parameters
    ----------
    what : str
        What the settings are about, in words, for the message (e.g. ``"fine-tuning"``).
    """

    def decorate(cls):
        generated = cls.__init__
        known = tuple(field.name for field in dataclasses.fields(cls) if field.init)

        @functools.wraps(generated)
        def __init__(self, *args, **kwargs):
            unknown = [name for name in kwargs if name not in known]
            if unknown:
                raise TypeError(unknown_fields_message(what, cls.__name__, unknown, known))
            generated(self, *args, **kwargs)

        cls.__init__ = __init__
        return cls

    return decorate

"""Node declarations written once (docs/nodes.md, "Node declarations").

``@node(...)`` gives a node class everything ComfyUI's classic (V1) node interface reads - ``CATEGORY``,
``DESCRIPTION``, ``FUNCTION``, ``OUTPUT_NODE``, ``INPUT_TYPES``, ``RETURN_TYPES`` / ``RETURN_NAMES`` /
``OUTPUT_TOOLTIPS`` - from one declaration: the node id, display name, category and description, the inputs (each
with its tooltip) and the outputs as ``(type, name, tooltip)`` entries. It registers the class under its id in
:data:`NODE_CLASS_MAPPINGS` / :data:`NODE_DISPLAY_NAME_MAPPINGS`, which ``nodes/__init__.py`` exports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Kind = str | list[str] | Callable[[], list[str]]
"""An input's type: a type name, a list of choices, or a function listing the choices when ComfyUI asks."""
Field = tuple[Kind, dict[str, Any]]
Output = tuple[str, str, str]
"""An output: ``(type, name, tooltip)``."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}


def field(kind: Kind, tooltip: str, **options: Any) -> Field:
    """One input: its type (a choice-listing function is called each time ComfyUI asks for the inputs, so file menus
    list what exists now), its tooltip and ComfyUI's options (``default``, ``min``, ``max``, ``step``...)."""
    return kind, {**options, "tooltip": tooltip}


def _section(fields: dict[str, Field]) -> dict[str, tuple]:
    """ComfyUI's ``{name: (type or choices, options)}``, made anew on each call as a hand-written INPUT_TYPES does."""
    return {name: (kind() if callable(kind) else kind if isinstance(kind, str) else list(kind), dict(options))
            for name, (kind, options) in fields.items()}


def node(node_id: str, display_name: str, category: str, function: str, description: str, *,
         required: dict[str, Field], optional: dict[str, Field] | None = None, outputs: Sequence[Output] = (),
         output_node: bool = False) -> Callable[[type], type]:
    """Class decorator: declare a node and register it under ``node_id``.

    Args:
        function: name of the method ComfyUI calls with the inputs as keyword arguments.
        required, optional: input name -> :func:`field`, in the order the node shows them (saved workflows store
            widget values in this order).
        outputs: ``(type, name, tooltip)`` per output, in order.
        output_node: ComfyUI runs the node even when nothing uses its outputs (it shows or saves something).
    """
    sections = {"required": required, **({"optional": optional} if optional else {})}

    def declare(cls: type) -> type:
        if node_id in NODE_CLASS_MAPPINGS:
            raise ValueError(f"node id {node_id!r} is declared twice ({NODE_CLASS_MAPPINGS[node_id].__name__}, "
                             f"{cls.__name__})")
        if not callable(getattr(cls, function, None)):
            raise TypeError(f"{cls.__name__} has no method {function!r} for node {node_id!r}")
        cls.CATEGORY, cls.DESCRIPTION, cls.FUNCTION, cls.OUTPUT_NODE = category, description, function, output_node
        cls.INPUT_TYPES = classmethod(lambda _cls: {name: _section(fields) for name, fields in sections.items()})
        cls.RETURN_TYPES = tuple(kind for kind, _, _ in outputs)
        if outputs:  # as ComfyUI's nodes without outputs: no names or tooltips
            cls.RETURN_NAMES = tuple(name for _, name, _ in outputs)
            cls.OUTPUT_TOOLTIPS = tuple(tooltip for _, _, tooltip in outputs)
        NODE_CLASS_MAPPINGS[node_id] = cls
        NODE_DISPLAY_NAME_MAPPINGS[node_id] = display_name
        return cls

    return declare

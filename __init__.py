"""HonestFace for ComfyUI: reference-based one-step face restoration, face tools and the ALD landmark metric."""

try:
    import folder_paths  # noqa: F401  (always present when ComfyUI loads the pack)
except ImportError:  # imported outside ComfyUI, e.g. pytest collecting the repository root as a package
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"  # the frontend extension that shows the nodes' text results (docs/nodes.md)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

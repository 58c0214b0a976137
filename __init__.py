"""HonestFace for ComfyUI: reference-based one-step face restoration, face tools and the ALD landmark metric."""

try:
    import folder_paths  # noqa: F401  (always present when ComfyUI loads the pack)
except ImportError:  # imported outside ComfyUI, e.g. pytest collecting the repository root as a package
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

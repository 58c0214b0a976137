"""Files the pack reads and writes: where model files live (``model_paths``), how weight files are read safely
(``weight_files``, ``checkpoint_globals``, ``onnx_sessions``), third-party model packs (insightface, facexlib), images
and output paths."""

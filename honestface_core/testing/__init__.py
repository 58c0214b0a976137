"""Random-weight model files in the exact on-disk formats the real loaders read (tests, wiring graphs without
real weights; outputs are meaningless). Production modules only load; everything that writes such files is here:

- :mod:`.models_folder`: ``write_test_models(dir)``, every file in the ComfyUI ``models/`` layout
  (``honestface make-test-models``);
- :mod:`.facexlib_files`, :mod:`.insightface_packs`, :mod:`.arcface_onnx`, :mod:`.honestface_files`: one writer
  per family of files.
"""

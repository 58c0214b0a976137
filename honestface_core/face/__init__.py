"""The face pipeline, in the order an image goes through it (docs/design.md §1):
detection -> alignment -> (parsing, identity, landmarks) -> the model (``honestface_core.model``) -> pasteback.
``references`` turns photos of one person into the identity set the model is conditioned on."""

"""HonestFace core library: reference-based one-step face restoration.

No ComfyUI import anywhere in this package; plain-Python users and the ``honestface`` CLI use it directly.
Data flows one way: detect -> align -> embed -> restore -> paste back.
"""

__version__ = "0.1.0"

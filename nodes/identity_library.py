"""HonestFace Identity Library: several people's identity sets for group photos (docs/restore.md, "Group photos")."""

from __future__ import annotations

from honestface_core.errors import HonestFaceError
from honestface_core.face.identity_library import IdentityLibrary

from .declare import field, node
from .result_text import ui_text
from .types import LIBRARY, REFS

PEOPLE = 4
"""People per node (our choice; chain nodes through ``library`` for more)."""


@node("HonestFaceIdentityLibrary", "HonestFace Identity Library", "HonestFace/references", "build",
      "Collects several people's references (one HonestFace Load References or Load Identity Set per person) for group "
      "photos: HonestFace Restore Faces matches every face to the closest person and restores it with that person's "
      "references, all faces still in one UNet batch. Chain libraries for more than four people.",
      required={},
      optional={
          "library": field(LIBRARY, "A library to extend (for more than four people)."),
          **{key: spec for i in range(1, PEOPLE + 1) for key, spec in (
              (f"references_{i}", field(REFS, f"Person {i}'s references.")),
              (f"name_{i}", field("STRING", f"Person {i}'s name, shown in Restore Faces' info and report.",
                                  default=f"person {i}")))},
      },
      outputs=[(LIBRARY, "identity_library", "The people, each with their references."),
               ("STRING", "info", "The people in the library and their references.")])
class IdentityLibraryNode:
    def build(self, library: IdentityLibrary | None = None, references_1=None, name_1: str = "person 1",
              references_2=None, name_2: str = "person 2", references_3=None, name_3: str = "person 3",
              references_4=None, name_4: str = "person 4"):
        names, sets = (list(library.names), list(library.sets)) if library is not None else ([], [])
        people = ((references_1, name_1), (references_2, name_2), (references_3, name_3), (references_4, name_4))
        for i, (refs, name) in enumerate(people, start=1):
            if refs is not None:
                names.append(str(name).strip() or f"person {i}")
                sets.append(refs)
        if not sets:
            raise HonestFaceError("HonestFace Identity Library", "has no references connected",
                                  "Connect one person's references (HonestFace Load References) to references_1")
        built = IdentityLibrary(names, sets)
        info = "\n".join(f"{n}: {len(s)} reference(s) ({s.encoder_name})" for n, s in zip(built.names, built.sets))
        return {"ui": ui_text(info), "result": (built, info)}

"""Run the pack inside a real ComfyUI 0.3.75 (the tree unpacked by ``scripts/fetch_test_assets.sh``).

Nothing is written into the repository or into ``.cache/comfyui``: every run gets a temporary base directory
(``--base-directory``: custom_nodes/, input/, output/, temp/, user/, models/) whose ``custom_nodes/`` holds a symlink
to the repository, and the server runs from a temporary tree of symlinks (with its own copy of ``main.py``, so the
ComfyUI tree's own ``extra_model_paths.yaml`` is not read). Models come from an extra_model_paths yaml.

Two ways in:
- :func:`load_inprocess`: import ComfyUI in this process (CPU) and ``nodes.load_custom_node`` the pack; node classes
  are then called directly.
- :class:`ComfyServer`: ``main.py --cpu`` on a free local port; ``/object_info``, ``/prompt``, ``/history``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
COMFY_DIR = REPO / ".cache" / "comfyui"
PACK_NAME = "comfyui-honestface"
WORKFLOWS = REPO / "workflows"
# The ComfyUI folders that --base-directory relocates (never shared with the unpacked tree).
_RELOCATED = {"custom_nodes", "models", "input", "output", "temp", "user", "extra_model_paths.yaml", "main.py"}


def require_comfyui() -> Path:
    if not (COMFY_DIR / "main.py").is_file():
        pytest.fail(f"ComfyUI test tree {COMFY_DIR} is missing: run `bash scripts/setup.sh --test`")
    return COMFY_DIR


def make_base_dir(root: Path) -> Path:
    """Create a ComfyUI base directory under ``root`` with the repository linked into ``custom_nodes/``."""
    base = Path(root)
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return base


def write_extra_model_paths(path: Path, models_dir: Path, name: str = "honestface_tests") -> Path:
    """Write an extra_model_paths.yaml that maps the pack's folders (and checkpoints) to ``models_dir``."""
    folders = ("insightface", "facexlib", "facedetection", "honestface", "checkpoints", "diffusers", "iqa")
    lines = [f"{name}:", f"    base_path: {Path(models_dir).resolve()}"]
    lines += [f"    {folder}: {folder}" for folder in folders]
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------------- in-process


@dataclass
class InProcessComfy:
    """ComfyUI imported into this process with the pack loaded."""

    base_dir: Path
    nodes: ModuleType  # ComfyUI's nodes.py
    folder_paths: ModuleType
    pack: ModuleType  # the pack's root module as ComfyUI imported it
    pack_nodes: dict[str, type]  # the pack's NODE_CLASS_MAPPINGS

    def node(self, name: str):
        """An instance of the pack's node class ``name``."""
        return self.pack_nodes[name]()

    def run(self, name: str, **inputs):
        """Call node ``name``'s FUNCTION with ``inputs`` (as ComfyUI's executor would for a V1 node)."""
        obj = self.node(name)
        return getattr(obj, obj.FUNCTION)(**inputs)


_INPROCESS: InProcessComfy | None = None


def _use_comfy_modules() -> None:
    """Put ComfyUI first on sys.path; drop this repo's ``nodes`` package if something imported it top-level
    (``python -m pytest`` puts the repository on sys.path, where ``nodes/`` would shadow ComfyUI's ``nodes.py``)."""
    comfy = str(COMFY_DIR)
    if comfy in sys.path:
        sys.path.remove(comfy)
    sys.path.insert(0, comfy)
    mod = sys.modules.get("nodes")
    if mod is not None and Path(getattr(mod, "__file__", "") or "").resolve().parent != COMFY_DIR.resolve():
        for name in [n for n in sys.modules if n == "nodes" or n.startswith("nodes.")]:
            del sys.modules[name]


def load_inprocess(base_dir: Path, extra_model_paths: Path | None = None) -> InProcessComfy:
    """Import ComfyUI (CPU, base directory ``base_dir``), apply ``extra_model_paths`` like main.py does, then load
    the pack with ``nodes.load_custom_node`` (a coroutine in 0.3.75). Once per test session: ComfyUI's module
    state is global."""
    global _INPROCESS
    if _INPROCESS is not None:
        return _INPROCESS
    require_comfyui()
    _use_comfy_modules()
    from comfy.cli_args import args

    args.cpu = True
    args.base_directory = str(base_dir)
    args.disable_api_nodes = True
    import folder_paths

    if Path(folder_paths.base_path).resolve() != Path(base_dir).resolve():
        pytest.fail(f"folder_paths was imported before the harness set the base directory ({folder_paths.base_path})")
    if extra_model_paths is not None:
        import utils.extra_config

        utils.extra_config.load_extra_path_config(str(extra_model_paths))
    import comfy.model_management  # noqa: F401  (device setup with args.cpu)
    import nodes as comfy_nodes

    pack_path = os.path.join(folder_paths.get_folder_paths("custom_nodes")[0], PACK_NAME)
    builtin = set(comfy_nodes.NODE_CLASS_MAPPINGS)
    if not asyncio.run(comfy_nodes.load_custom_node(pack_path, builtin)):
        pytest.fail("ComfyUI could not load the pack (see the logged traceback)")
    pack = sys.modules[pack_path.replace(".", "_x_")]
    _INPROCESS = InProcessComfy(Path(base_dir), comfy_nodes, folder_paths, pack, dict(pack.NODE_CLASS_MAPPINGS))
    return _INPROCESS


# ------------------------------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_tree(root: Path) -> Path:
    """A copy of the ComfyUI tree made of symlinks, with a real ``main.py`` (main.py reads the
    extra_model_paths.yaml next to its real path; the unpacked tree's one points at folders that do not exist)."""
    tree = root / "comfyui"
    tree.mkdir(parents=True, exist_ok=True)
    for entry in COMFY_DIR.iterdir():
        if entry.name not in _RELOCATED:
            (tree / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    shutil.copy2(COMFY_DIR / "main.py", tree / "main.py")
    return tree


class ComfyServer:
    """A real ComfyUI server on 127.0.0.1 (CPU) with the pack in its custom_nodes; use as a context manager.

    Every wait is bounded; on exit the server's process group (started here) is terminated, then killed.
    """

    def __init__(self, root: Path, extra_model_paths: Path | None = None, start_timeout: float = 240.0,
                 extra_args: tuple[str, ...] = ()):
        require_comfyui()
        self.extra_args = tuple(extra_args)  # more main.py arguments, e.g. ("--front-end-root", DIR)
        self.root = Path(root)
        self.base_dir = make_base_dir(self.root / "base")
        self.extra_model_paths = extra_model_paths
        self.start_timeout = start_timeout
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.root / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> "ComfyServer":
        tree = _server_tree(self.root)
        cmd = [sys.executable, str(tree / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
               "--base-directory", str(self.base_dir)]
        if self.extra_model_paths is not None:
            cmd += ["--extra-model-paths-config", str(self.extra_model_paths)]
        cmd += self.extra_args
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            self._wait_until_up()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with code {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=5)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(1.0)
        pytest.fail(f"ComfyUI did not answer within {self.start_timeout:.0f} s:\n{self.log_tail()}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
            except ProcessLookupError:
                pass
        if getattr(self, "_log", None) is not None:
            self._log.close()

    # -- HTTP -------------------------------------------------------------------------------------------------

    def get(self, route: str, timeout: float = 30.0):
        with urllib.request.urlopen(self.url + route, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, route: str, payload: dict, timeout: float = 30.0) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + route, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run_prompt(self, prompt: dict, timeout: float = 300.0) -> dict:
        """POST an API-format prompt, poll /history until it finishes (bounded); return its history entry."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        if status != 200:
            pytest.fail(f"/prompt rejected the workflow ({status}): {json.dumps(body, indent=1)[:4000]}")
        prompt_id = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
                return entry
            if self.proc.poll() is not None:
                pytest.fail(f"ComfyUI died while running the prompt:\n{self.log_tail()}")
            time.sleep(0.5)
        pytest.fail(f"the prompt did not finish within {timeout:.0f} s:\n{self.log_tail()}")


def output_files(entry: dict, output_dir: Path) -> list[Path]:
    """Paths of the images a finished prompt's history entry lists (type 'output')."""
    files = []
    for out in entry.get("outputs", {}).values():
        for img in out.get("images", []):
            if img.get("type") == "output":
                files.append(Path(output_dir) / img.get("subfolder", "") / img["filename"])
    return files


def load_api_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / name).read_text())


# ------------------------------------------------------------------------------------------------ fixtures
# Shared by every ComfyUI test module through tests/conftest.py (ComfyUI's module state is global, and a server
# start costs tens of seconds on 2 cores: one of each per session).


@pytest.fixture(scope="session")
def comfy_inprocess(tmp_path_factory, test_models_dir) -> InProcessComfy:
    """ComfyUI in this process with the pack loaded; the test models come from an extra_model_paths.yaml applied
    before the pack loads (as main.py does), so the pack must merge with them."""
    root = tmp_path_factory.mktemp("comfy_inprocess")
    base = make_base_dir(root / "base")
    return load_inprocess(base, write_extra_model_paths(root / "extra_model_paths.yaml", test_models_dir))


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, test_models_dir):
    """A running ComfyUI server (CPU) with the pack and the test models; stopped at the end of the session."""
    root = tmp_path_factory.mktemp("comfy_server")
    with ComfyServer(root, write_extra_model_paths(root / "extra_model_paths.yaml", test_models_dir)) as server:
        yield server


def face_change(out, src, pad: float):
    """Where a one-face workflow changed its photo: ``(diff, far, inner)``, the per-pixel largest channel change,
    the pixels farther than ``pad`` x the detection box from the face (the real YuNet), and the change inside the
    box. The FFHQ crop spans about twice the detector box."""
    import numpy as np

    from honestface_core.face.detection import YuNetDetector
    from honestface_core.files.model_paths import bundled_model_path

    assert out.shape == src.shape
    diff = np.abs(out.astype(int) - src.astype(int)).max(-1)
    faces = YuNetDetector(bundled_model_path("face_detection_yunet_2023mar.onnx")).detect(src)
    assert len(faces) == 1
    x1, y1, x2, y2 = faces[0].box
    margin = pad * max(x2 - x1, y2 - y1)
    far = np.ones_like(diff, dtype=bool)
    far[max(0, int(y1 - margin)):int(y2 + margin), max(0, int(x1 - margin)):int(x2 + margin)] = False
    return diff, far, diff[int(y1):int(y2), int(x1):int(x2)]


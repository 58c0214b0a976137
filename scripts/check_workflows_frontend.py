"""Check the example workflows (``workflows/*.json``) in the real ComfyUI frontend, as a user sees them.

For each frontend (the ``comfyui-frontend-package`` ComfyUI 0.3.75 pins, 1.32.9, and any other built frontend given
with ``--frontend``, e.g. 1.58.1 served with ``--front-end-root``) it starts ComfyUI 0.3.75 from ``.cache/comfyui`` on
127.0.0.1 with this pack and the random-weight test models (``tests/comfy_harness.py``), opens the page in headless
Chromium over the DevTools protocol and checks (with the frontend's own schema check turned on, see ``SETTINGS``):

1. **Load**: each workflow, opened with ``app.loadGraphData`` (the path of a dropped or opened file), raises no
   warning: no console warning or error, no exception, no toast, no dialog, nothing in the error overlay
   (``[data-testid=error-overlay]``, newer frontends); ``app.graphToPrompt()`` equals its API twin in
   ``workflows/api/`` (for a UI file outside ``workflows/``, e.g. one saved by an older version of the pack in
   ``tests/nodes/saved_workflows/``: its own ``api/`` twin plus the defaults of the inputs added since); every node title fits its node, every link runs from left to right, no nodes overlap, and
   every HonestFace node with a text result shows its panel.
   Two broken copies of the first workflow (a schema error, an unknown node type) must be reported, so a silent
   pass means the checks observed the page.
2. **Run**: each workflow is run with the Run button. When it finishes, every HonestFace text panel (the pack's
   web extension) must be visible and show its result, read from the page's DOM (Landmark Evaluation: a line
   per image with L2-LD/ALD; Identity Similarity: cosine and degrees); a screenshot of the page is written to
   ``--out``. A workflow that needs real detector weights (``NEEDS_REAL_WEIGHTS``) may instead fail, but then
   the page must show the error the server reported.
3. **Missing models**: on a second server without the test models, opening a workflow must warn and name every
   model its loaders ask for that is gone (on the first server's menus, not on this one's); a workflow whose models
   all remain (they ship in pip packages) must still load without a warning. Screenshots of these loads too.

Requests to other hosts that ComfyUI's Content-Security-Policy blocks (the frontend's registry look-ups at
api.comfy.org) are counted but not failures: offline they are made, and blocked, for any workflow. Needs a Chromium
binary (Debian: ``apt-get install chromium``). Exit status 0 when everything passes::

    .venv/bin/python scripts/check_workflows_frontend.py [--chromium /usr/bin/chromium] [--out DIR]
        [--frontend .cache/frontend-1.58.1/comfyui_frontend_package/static] [workflows/NAME.json ...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402  (a ComfyUI dependency, in the venv)

import comfy_harness  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                  "--hide-scrollbars", "--window-size=1600,1000", "--remote-debugging-port=0"]
# What the frontends use to tell the user something: PrimeVue toasts and dialogs (1.32.9), the newer toasts,
# dialogs and the error overlay (1.58.1).
SURFACES = ".p-toast-message, [data-testid=toast], .p-dialog, [role=dialog], [role=alertdialog], [data-testid=error-overlay]"
# Workflows whose run needs real face-detector weights; with the random-weight test models the run may fail, and
# then the page must show the error.
RANDOM_INSIGHTFACE = "its insightface detector has random weights in the test models"
NEEDS_REAL_WEIGHTS = {"Restore faces with reference photos": RANDOM_INSIGHTFACE, "Restore a group photo": RANDOM_INSIGHTFACE}
# What the text panel of these node types must show after a successful run.
EXPECTED_TEXT = {"HonestFaceLandmarkEvaluation": ("image 0: L2-LD", "ALD", "mean of"),
                 "HonestFaceIdentitySimilarity": ("cos ", "°", "mean: cos"),
                 "HonestFaceRestoreFaces": ("restored ", "face 0: Ref-Deg"),  # the info, then the honesty report
                 "HonestFaceImageQuality": ("mean: ",)}
# The user's settings: the frontend's own schema check on (newer frontends turn it off by default), the tutorial
# seen (a fresh user folder opens the template browser on the first visit), no "leave the page?" question.
SETTINGS = {"Comfy.Validation.Workflows": True, "Comfy.TutorialCompleted": True, "Comfy.Window.UnloadConfirmation": False}

# Runs in the page once the app is up: records every surface element that appears from now on, and execution events.
WATCH_JS = """
() => {
  window.__hfSeen = [];
  window.__hfEvents = [];
  const sel = %s;
  const record = (el) => setTimeout(() => {  // an element without text tells the user nothing
    const text = (el.innerText || '').trim().slice(0, 4000);
    if (text) window.__hfSeen.push(text);
  }, 300);
  new MutationObserver((mutations) => {
    for (const m of mutations) for (const n of m.addedNodes) {
      if (!(n instanceof Element)) continue;
      if (n.matches(sel)) record(n);
      n.querySelectorAll(sel).forEach(record);
    }
  }).observe(document.body, {childList: true, subtree: true});
  const api = window.comfyAPI.api.api;
  for (const type of ['execution_start', 'execution_success', 'execution_error', 'execution_interrupted'])
    api.addEventListener(type, (e) => window.__hfEvents.push({type, detail: e.detail}));
  return true;
}
""" % json.dumps(SURFACES)

# Texts of the surfaces on screen now (toasts, dialogs, error overlay).
OPEN_SURFACES_JS = """
() => [...document.querySelectorAll(%s)].filter((e) => e.checkVisibility())
        .map((e) => (e.innerText || '').trim().slice(0, 4000)).filter((t) => t)
""" % json.dumps(SURFACES)

LOAD_JS = """
async (workflow, name) => {
  window.__hfSeen = [];
  await window.app.loadGraphData(workflow, true, true, name);
  await new Promise((r) => setTimeout(r, 2000));
  const prompt = (await window.app.graphToPrompt()).output;
  return {seen: window.__hfSeen, prompt, nodes: window.app.graph.nodes.length};
}
"""

# Titles wider than the room litegraph gives them (it truncates them with an ellipsis), and the HonestFace nodes
# whose text panel is missing.
LAYOUT_JS = """
() => {
  const LG = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph ?? {};
  const ctx = document.createElement('canvas').getContext('2d');
  ctx.font = window.app.canvas.title_text_font;
  const titleHeight = LG.NODE_TITLE_HEIGHT ?? 30;
  const cut = [], noPanel = [];
  for (const node of window.app.graph.nodes) {
    const room = node.size[0] - 2 * titleHeight, need = ctx.measureText(node.getTitle?.() ?? node.title).width;
    if (need > room) cut.push(`${node.title} (${Math.ceil(need)} px of text, ${Math.floor(room)} px of room)`);
    const def = node.constructor.nodeData ?? {};
    const hasText = (def.output ?? []).includes('STRING') || (def.output_node && !(def.output ?? []).length);
    if (node.type.startsWith('HonestFace') && hasText && !node.honestfaceResult) noPanel.push(node.title);
  }
  const nodes = window.app.graph.nodes, links = window.app.graph.links;
  const box = (n) => [n.pos[0], n.pos[1] - titleHeight, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
  const backward = [], overlap = [];
  for (const l of (links instanceof Map ? [...links.values()] : Object.values(links ?? {}))) {
    const a = window.app.graph.getNodeById(l.origin_id), b = window.app.graph.getNodeById(l.target_id);
    if (a && b && box(a)[2] >= box(b)[0]) backward.push(`${a.title} -> ${b.title}`);
  }
  nodes.forEach((a, i) => nodes.slice(i + 1).forEach((b) => {
    const [p, q] = [box(a), box(b)];
    if (p[0] < q[2] && q[0] < p[2] && p[1] < q[3] && q[1] < p[3]) overlap.push(`${a.title} / ${b.title}`);
  }));
  return {cut, noPanel, backward, overlap};
}
"""

# The HonestFace text panels as the DOM has them: text, visible, inside the window.
PANELS_JS = """
() => window.app.graph.nodes.filter((n) => n.honestfaceResult).map((n) => {
  const el = n.honestfaceResult.panel, r = el.getBoundingClientRect();
  const inside = r.width > 20 && r.height > 20 && r.right > 0 && r.bottom > 0 && r.left < innerWidth && r.top < innerHeight;
  return {id: String(n.id), type: n.type, title: n.title, text: el.innerText, state: el.dataset.state ?? '',
          visible: el.isConnected && el.checkVisibility() && inside};
})
"""

QUEUE_BUTTON_JS = """
() => {
  const root = document.querySelector('[data-testid=queue-button]');
  if (!root) return null;
  const el = root.matches('button') ? root : root.querySelector('button');
  const r = el.getBoundingClientRect();
  return {x: r.left + r.width / 2, y: r.top + r.height / 2};
}
"""

# Closes what the last step opened (through the frontend's Pinia stores), so nothing leaks into the next one.
CLOSE_JS = """
() => {
  const pinia = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;
  for (const store of pinia._s.values()) {
    if (Array.isArray(store.dialogStack) && typeof store.closeDialog === 'function')
      while (store.dialogStack.length) store.closeDialog({key: store.dialogStack[0].key});
    for (const f of ['dismissAll', 'removeAll', 'dismissErrorOverlay'])
      if (typeof store[f] === 'function' && store.$id !== 'workflow') store[f]();
  }
  window.__hfSeen = [];
  return true;
}
"""


class Cdp:
    """A minimal Chrome DevTools Protocol client for one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.events: list[dict] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif data.get("method") == "Page.javascriptDialogOpening":  # e.g. "leave the page?": accept
                asyncio.create_task(self.send("Page.handleJavaScriptDialog", {"accept": True}))
            elif "method" in data:
                self.events.append(data)

    async def send(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params or {}})
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def call(self, function_js: str, *args, timeout: float = 60.0):
        """Call a JS function (source text) with JSON arguments; await it; return its JSON value."""
        res = await self.send("Runtime.evaluate", {
            "expression": f"({function_js})(...{json.dumps(list(args))})",
            "awaitPromise": True, "returnByValue": True}, timeout=timeout)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page exception: {json.dumps(res['exceptionDetails'])[:2000]}")
        return res["result"].get("value")

    async def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    async def screenshot(self, path: Path) -> None:
        await self.call("() => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 700)))")
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))


def console_problems(events: list[dict]) -> tuple[list[str], list[str]]:
    """Console warnings/errors, log entries of level warning/error and uncaught exceptions among CDP events, split
    into (problems, ignored): ignored are the requests to other hosts that ComfyUI's Content-Security-Policy
    (``connect-src 'self'``) blocks, i.e. the frontend's node-registry look-ups (api.comfy.org), which it makes for
    every opened workflow and which cannot succeed offline."""
    problems, ignored = [], []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("warning", "error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            problems.append(f"console.{p['type']}: {text}")
        elif e["method"] == "Log.entryAdded" and p["entry"].get("level") in ("warning", "error"):
            text = p["entry"].get("text", "")
            blocked = "violates the following Content Security Policy directive" in text and "127.0.0.1" not in text
            (ignored if blocked else problems).append(f"log.{p['entry']['level']}: {text} {p['entry'].get('url', '')}")
        elif e["method"] == "Runtime.exceptionThrown":
            problems.append(f"exception: {json.dumps(p.get('exceptionDetails'))[:2000]}")
    return problems, ignored


def prompt_differences(got: dict, api: dict) -> list[str]:
    """Where the frontend's API prompt differs from the API twin (class_type and inputs; ``_meta`` ignored)."""
    diffs = []
    for key in sorted(set(got) | set(api), key=str):
        g, a = got.get(key), api.get(key)
        if g is None or a is None:
            diffs.append(f"node {key}: only in {'the API twin' if g is None else 'the frontend prompt'}")
        elif g["class_type"] != a["class_type"]:
            diffs.append(f"node {key}: class_type {g['class_type']} != {a['class_type']}")
        elif g["inputs"] != a["inputs"]:
            diffs.append(f"node {key} ({a['class_type']}): inputs {g['inputs']} != API twin {a['inputs']}")
    return diffs


def broken_copies(workflow: dict) -> list[tuple[str, dict, str]]:
    """Negative controls: (label, workflow, text that must be reported) for a copy whose first node has a position
    the schema rejects, and one whose first node has a type no installed pack provides."""
    bad_schema, bad_type = json.loads(json.dumps(workflow)), json.loads(json.dumps(workflow))
    bad_schema["nodes"][0]["pos"] = "not a position"
    bad_type["nodes"][0]["type"] = "HonestFaceNoSuchNode"
    return [("schema error", bad_schema, "Invalid workflow against zod schema"),
            ("unknown node type", bad_type, "HonestFaceNoSuchNode")]


def put_inputs(workflows: list[dict], input_dir: Path) -> None:
    """Real photos under every file name the workflows' LoadImage nodes ask for (skimage's astronaut; for a
    'restored' image a blurred JPEG q=25 copy of it) and in every reference folder Load References reads."""
    from PIL import Image, ImageFilter
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    for wf in workflows:
        for node in wf["nodes"]:
            if node["type"] == "LoadImage":
                name = node["widgets_values"][0]
                if "restored" in name:
                    degraded = input_dir / "_degraded.jpg"
                    photo.filter(ImageFilter.GaussianBlur(1.5)).save(degraded, quality=25)
                    Image.open(degraded).save(input_dir / name)
                else:
                    photo.save(input_dir / name)
            elif node["type"] == "HonestFaceLoadReferences" and node["widgets_values"][0]:
                folder = input_dir / node["widgets_values"][0]
                folder.mkdir(parents=True, exist_ok=True)
                photo.transpose(Image.FLIP_LEFT_RIGHT).save(folder / "mirrored.png")
                photo.crop((64, 0, 512, 448)).save(folder / "cropped.png")


def start_chromium(chromium: str, profile: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{chromium} exited with code {proc.returncode}")
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text().split()[0])
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{chromium} did not open its DevTools port within 60 s")


@dataclass
class Report:
    """Every check's result for one frontend: (label, passed, detail lines)."""

    frontend: str
    results: list[tuple[str, bool, list[str]]] = field(default_factory=list)

    def add(self, label: str, ok: bool, details: list[str]) -> None:
        self.results.append((label, ok, details))
        print(f"[{'PASS' if ok else 'FAIL'}] {self.frontend}: {label}")
        for d in details:
            print(f"    {d}")

    @property
    def failures(self) -> int:
        return sum(not ok for _, ok, _ in self.results)


class Page:
    """The ComfyUI page in Chromium, with the helpers the checks need."""

    def __init__(self, cdp: Cdp, url: str):
        self.cdp, self.url = cdp, url

    async def open(self) -> str:
        """Navigate (or reload) and wait until the app is up; return the frontend's version."""
        self.cdp.events.clear()
        await self.cdp.send("Page.navigate", {"url": self.url})
        deadline = time.monotonic() + 180
        while not await self.cdp.call("() => !!(window.app && window.app.graph && window.app.canvas && "
                                      "document.querySelector('[data-testid=queue-button]'))"):
            if time.monotonic() > deadline:
                raise RuntimeError("the ComfyUI frontend did not start within 180 s")
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # let start-up finish (settings, extensions, default graph)
        await self.cdp.call(WATCH_JS)
        await self.cdp.call(CLOSE_JS)
        return await self.cdp.call("() => window.__COMFYUI_FRONTEND_VERSION__ ?? 'unknown'")

    async def load(self, workflow: dict, name: str) -> tuple[dict, list[str], list[str]]:
        """Open ``workflow``; return the page's result, what it reported (console, surfaces) and ignored lines."""
        await self.cdp.call(CLOSE_JS)
        self.cdp.events.clear()
        res = await self.cdp.call(LOAD_JS, workflow, name, timeout=120)
        problems, ignored = console_problems(self.cdp.events)
        shown = list(dict.fromkeys(res["seen"] + await self.cdp.call(OPEN_SURFACES_JS)))
        return res, problems + [f"shown: {t}" for t in shown], ignored

    async def run(self, timeout: float = 300.0) -> tuple[str, list[str]]:
        """Click Run; wait until the prompt finishes or is refused; return ("success" | "error" | "refused",
        what the page shows)."""
        await self.cdp.call("() => { window.__hfEvents = []; window.__hfSeen = []; return true; }")
        pos = await self.cdp.call(QUEUE_BUTTON_JS)
        if pos is None:
            return "no Run button", []
        await self.cdp.click(pos["x"], pos["y"])
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            events = [e["type"] for e in await self.cdp.call("() => window.__hfEvents")]
            done = next((e for e in events if e in ("execution_success", "execution_error", "execution_interrupted")), None)
            if done or (not events and time.monotonic() - start > 30):  # nothing started: the prompt was refused
                await asyncio.sleep(1.5)  # let the frontend draw the outputs / the error
                shown = list(dict.fromkeys(await self.cdp.call("() => window.__hfSeen") + await self.cdp.call(OPEN_SURFACES_JS)))
                status = {"execution_success": "success", None: "refused"}.get(done, "error")
                return status, shown
            await asyncio.sleep(0.5)
        return "timeout", []


async def connect(devtools_port: int) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse, Cdp]:
    http = aiohttp.ClientSession()
    async with http.get(f"http://127.0.0.1:{devtools_port}/json/list") as r:
        target = next(t for t in await r.json() if t["type"] == "page")
    ws = await http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
    cdp = Cdp(ws)
    for domain in ("Page", "Runtime", "Log"):
        await cdp.send(f"{domain}.enable")
    return http, ws, cdp


def with_defaults(api: dict, info: dict) -> dict:
    """An older workflow's API twin plus the defaults of the widget inputs its nodes gained since (``info``: the
    server's /object_info), which the frontend fills in when it opens the file."""
    out = json.loads(json.dumps(api))
    for node in out.values():
        spec = info[node["class_type"]]["input"]
        for key, value in {**spec.get("required", {}), **spec.get("optional", {})}.items():
            combo = isinstance(value[0], list)
            if key not in node["inputs"] and (combo or value[0] in ("INT", "FLOAT", "STRING", "BOOLEAN")):
                options = value[1] if len(value) > 1 else {}
                node["inputs"][key] = options.get("default", value[0][0] if combo else None)
    return out


async def check_with_models(cdp: Cdp, server: comfy_harness.ComfyServer, workflows: dict[str, dict],
                            twins: dict[str, Path], out: Path, report: Report) -> None:
    """Checks 1 (load) and 2 (run) on a server with the test models."""
    page = Page(cdp, server.url)
    version = await page.open()
    startup, _ = console_problems(cdp.events)
    lines = list(dict.fromkeys(p.split("\n")[0][:160] for p in startup))
    report.add(f"frontend {version} started ({len(startup)} console warnings/errors before any workflow)", True,
               [f"start-up: {p}" for p in lines])
    for name, wf in workflows.items():
        res, problems, ignored = await page.load(wf, name)
        api = json.loads(twins[name].read_text())
        if twins[name].parent.parent != REPO / "workflows":  # saved by an older version of the pack
            api = with_defaults(api, server.get("/object_info"))
        problems += prompt_differences(res["prompt"], api)
        layout = await cdp.call(LAYOUT_JS)
        problems += [f"title cut off: {t}" for t in layout["cut"]]
        problems += [f"no text panel: {t}" for t in layout["noPanel"]]
        problems += [f"link does not run left to right: {t}" for t in layout["backward"]]
        problems += [f"nodes overlap: {t}" for t in layout["overlap"]]
        report.add(f"load {name}: {res['nodes']} nodes", not problems,
                   problems + [f"{len(ignored)} blocked off-machine registry look-up(s) ignored"] * bool(ignored))
    first = next(iter(workflows))
    for label, wf, must in broken_copies(workflows[first]):
        _, problems, _ = await page.load(wf, f"{first} ({label})")
        report.add(f"negative control, {label}: reported", any(must in p for p in problems), problems)

    shots = out / report.frontend
    shots.mkdir(parents=True, exist_ok=True)
    for name, wf in workflows.items():
        _, problems, _ = await page.load(wf, name)
        status, shown = await page.run()
        panels = await cdp.call(PANELS_JS)
        await cdp.screenshot(shots / f"{name}.png")
        details = [f"status: {status}", f"screenshot: {shots / f'{name}.png'}"]
        ok = status == "success" and not problems
        for p in panels:
            expected = EXPECTED_TEXT.get(p["type"], ())
            good = p["visible"] and p["state"] == "result" and all(e in p["text"] for e in expected)
            ok &= good
            details.append(f"{'ok' if good else 'BAD'} panel of {p['title']} (visible: {p['visible']}): "
                           + p["text"].strip().replace("\n", " | ")[:600])
        if status != "success" and name in NEEDS_REAL_WEIGHTS:
            ok = status == "error" and bool(shown)  # the failure is shown to the user
            details.append(f"may fail: {NEEDS_REAL_WEIGHTS[name]}")
        details += [f"shown: {t}" for t in shown] + problems
        report.add(f"run {name}", ok, details)


async def check_without_models(cdp: Cdp, server: comfy_harness.ComfyServer, workflows: dict[str, dict],
                               with_models: dict, shots: Path, report: Report) -> None:
    """Check 3 on a server without the test models: the load names what is gone (``with_models``: the
    /object_info of the server that had them)."""
    page = Page(cdp, server.url)
    await page.open()
    without = server.get("/object_info")
    for name, wf in workflows.items():
        gone = missing_values(wf, with_models, without)
        _, problems, _ = await page.load(wf, name)
        deadline = time.monotonic() + 20  # newer frontends verify missing models after the load returns
        while any(v not in "\n".join(problems) for v in gone) and time.monotonic() < deadline:
            await asyncio.sleep(1)
            problems = list(dict.fromkeys(problems + [f"shown: {t}" for t in await cdp.call(OPEN_SURFACES_JS)]))
        await cdp.screenshot(shots / f"{name} (models missing).png")
        text = "\n".join(problems)
        unnamed = [v for v in gone if v not in text]
        ok = not unnamed if gone else not problems
        report.add(f"missing models, {name}: " + (f"names {', '.join(gone)}" if gone else "nothing missing"),
                   ok, [f"not named: {v}" for v in unnamed] + problems)


def missing_values(workflow: dict, before: dict, after: dict) -> list[str]:
    """Widget values of the workflow's HonestFace loaders that were on their menus before the models were moved
    away and are not after (the names the page must warn about)."""
    gone = []
    for node in workflow["nodes"]:
        if node["type"] not in before or not node["type"].startswith("HonestFace"):
            continue
        spec_b, spec_a = before[node["type"]]["input"]["required"], after[node["type"]]["input"]["required"]
        combos = [k for k, v in spec_b.items() if isinstance(v[0], list)]
        widgets = [k for k, v in spec_b.items() if isinstance(v[0], list) or v[0] in ("INT", "FLOAT", "STRING", "BOOLEAN")]
        for key, value in zip(widgets, node.get("widgets_values", [])):
            if key in combos and value in spec_b[key][0] and value not in spec_a[key][0]:
                gone.append(value)
    return list(dict.fromkeys(gone))


def check(chromium: str, frontend: str | None, paths: list[Path], out: Path) -> Report:
    """Every check of one frontend (None: the one ComfyUI installs), with fresh servers and browser."""
    from honestface_core.testing.models_folder import write_test_models

    label = "frontend-" + (Path(frontend).parent.parent.name.split("-")[-1] if frontend else "pinned")
    report = Report(label)
    names = {p: p.stem if p.resolve().parent == REPO / "workflows" else f"{p.stem} (saved)" for p in paths}
    workflows = {names[p]: json.loads(p.read_text()) for p in paths}
    twins = {names[p]: p.resolve().parent / "api" / p.name for p in paths}
    args = ("--front-end-root", str(Path(frontend).resolve())) if frontend else ()
    with tempfile.TemporaryDirectory(prefix="hf_frontend_") as tmp:
        root = Path(tmp)
        write_test_models(root / "models")
        yaml = comfy_harness.write_extra_model_paths(root / "extra_model_paths.yaml", root / "models")
        chromium_proc, port = start_chromium(chromium, root / "chromium-profile")

        async def run_all() -> None:
            http, ws, cdp = await connect(port)
            try:
                with serve(root / "with_models", yaml, args, workflows) as server:
                    await check_with_models(cdp, server, workflows, twins, out, report)
                    with_models = server.get("/object_info")
                with serve(root / "without_models", None, args, workflows) as server:
                    await check_without_models(cdp, server, workflows, with_models, out / label, report)
            finally:
                cdp.reader.cancel()
                await ws.close()
                await http.close()

        try:
            asyncio.run(run_all())
        finally:
            os.killpg(chromium_proc.pid, 15)
            chromium_proc.wait(timeout=20)
    return report


def serve(root: Path, yaml: Path | None, args: tuple[str, ...], workflows: dict[str, dict]) -> comfy_harness.ComfyServer:
    """A ComfyUI server (started by ``with``) with the workflows' input files and :data:`SETTINGS`."""
    server = comfy_harness.ComfyServer(root, yaml, extra_args=args)
    settings = server.base_dir / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps(SETTINGS))
    put_inputs(list(workflows.values()), server.input_dir)
    return server


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chromium", default=find_chromium(), help="Chromium binary (default: chromium on PATH)")
    ap.add_argument("--frontend", action="append", default=[],
                    help="also check this built frontend (a 'static' folder, served with --front-end-root)")
    ap.add_argument("--no-pinned", action="store_true", help="skip the frontend ComfyUI installs itself")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "frontend_check",
                    help="folder for the screenshots (default: outputs/frontend_check)")
    ap.add_argument("workflows", nargs="*", type=Path,
                    help="UI-format workflows with an API twin in the api/ folder beside them (default: workflows/*.json)")
    args = ap.parse_args(argv)
    if not args.chromium:
        print("no Chromium found: install it (Debian: apt-get install chromium) or pass --chromium")
        return 2
    paths = args.workflows or [Path(p) for p in sorted(glob.glob(str(REPO / "workflows" / "*.json")))]
    frontends = ([] if args.no_pinned else [None]) + args.frontend
    reports = [check(args.chromium, f, paths, args.out) for f in frontends]
    failures = sum(r.failures for r in reports)
    for r in reports:
        print(f"{r.frontend}: {len(r.results) - r.failures} passed, {r.failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

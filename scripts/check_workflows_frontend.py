"""Load every example workflow (``workflows/*.json``) in the real ComfyUI frontend and report what it complains about.

A developer check, not part of the test suite or CI (it needs a Chromium binary; Debian: ``apt-get install
chromium``). It starts ComfyUI 0.3.75 from ``.cache/comfyui`` on 127.0.0.1 with this pack and the random-weight test
models (``tests/comfy_harness.py``), opens the frontend that ComfyUI serves (the pip package
``comfyui-frontend-package``) in headless Chromium over the DevTools protocol, and for each workflow calls
``app.loadGraphData(workflow)``, the path a dropped or opened file takes. A workflow passes when, during its load:

- the console shows no warning or error and the page throws nothing;
- no toast appears (the frontend's zod validation, ``Comfy.Validation.Workflows``, reports a schema failure as an
  "Alert" toast "Invalid workflow against zod schema"; its link fixer reports repaired links as toasts);
- no dialog opens (missing node types, missing models, load errors);
- ``app.graphToPrompt()`` of the loaded graph equals the workflow's API twin in ``workflows/api/`` (class_type
  and inputs, links included), so widget values line up with the nodes' current inputs.

Two deliberately broken copies of the first workflow are loaded last (a schema error, an unknown node type); the
run fails if the frontend's report of either goes unseen, so a silent pass means the checks observed the page.
Requests to other hosts that ComfyUI's Content-Security-Policy blocks (the frontend's node-registry look-ups at
api.comfy.org) are counted but not failures: offline they are made, and blocked, for any workflow.
Exit status 0 when everything passes::

    .venv/bin/python scripts/check_workflows_frontend.py [--chromium /usr/bin/chromium] [--screenshot out.png]
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402  (a ComfyUI dependency, in the venv)

import comfy_harness  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                  "--window-size=1600,1000", "--remote-debugging-port=0"]

# Runs in the page once the app is up: records every toast and dialog element that appears from now on.
WATCH_JS = """
(() => {
  window.__hfSeen = [];
  const record = (el) => {
    const kind = el.matches('.p-toast-message') ? 'toast' : 'dialog';
    setTimeout(() => window.__hfSeen.push({kind, text: (el.innerText || '').trim().slice(0, 4000)}), 300);
  };
  new MutationObserver((mutations) => {
    for (const m of mutations) for (const n of m.addedNodes) {
      if (!(n instanceof Element)) continue;
      if (n.matches('.p-toast-message, .p-dialog')) record(n);
      n.querySelectorAll('.p-toast-message, .p-dialog').forEach(record);
    }
  }).observe(document.body, {childList: true, subtree: true});
  return true;
})()
"""

LOAD_JS = """
async (workflow, name) => {
  window.__hfSeen = [];
  await window.app.loadGraphData(workflow, true, true, name);
  await new Promise((r) => setTimeout(r, 1500));
  const prompt = (await window.app.graphToPrompt()).output;
  const open = [...document.querySelectorAll('.p-dialog')].map((d) => (d.innerText || '').trim().slice(0, 4000));
  return {seen: window.__hfSeen, open_dialogs: open, prompt, nodes: window.app.graph.nodes.length};
}
"""

# Closes every dialog the last load opened (through the frontend's Pinia dialog store), so none leaks into the next.
CLOSE_DIALOGS_JS = """
() => {
  const pinia = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;
  for (const store of pinia._s.values())
    if (Array.isArray(store.dialogStack) && typeof store.closeDialog === 'function')
      while (store.dialogStack.length) store.closeDialog({key: store.dialogStack[0].key});
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
        """Call a JS function (source text) on ``window`` with JSON arguments; await it; return its JSON value."""
        res = await self.send("Runtime.evaluate", {
            "expression": f"({function_js})(...{json.dumps(list(args))})",
            "awaitPromise": True, "returnByValue": True}, timeout=timeout)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page exception: {json.dumps(res['exceptionDetails'])[:2000]}")
        return res["result"].get("value")


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


def put_input_images(workflows: list[dict], input_dir: Path) -> None:
    """Write a real photo under every file name a LoadImage node asks for (so the widget and preview are real)."""
    from PIL import Image
    from skimage import data

    for wf in workflows:
        for node in wf["nodes"]:
            if node["type"] == "LoadImage":
                Image.fromarray(data.astronaut()).save(input_dir / node["widgets_values"][0])


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


async def check(server: comfy_harness.ComfyServer, devtools_port: int, paths: list[Path],
                screenshot: Path | None) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{devtools_port}/json/list") as r:
            page = next(t for t in await r.json() if t["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = Cdp(ws)
            for domain in ("Page", "Runtime", "Log"):
                await cdp.send(f"{domain}.enable")
            await cdp.send("Page.navigate", {"url": server.url})
            deadline = time.monotonic() + 120
            while not await cdp.call("() => !!(window.app && window.app.graph && window.app.canvas)"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the ComfyUI frontend did not start within 120 s")
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)  # let start-up finish (settings, extensions, default graph)
            startup, _ = console_problems(cdp.events)
            print(f"frontend up at {server.url}; start-up console warnings/errors (before any workflow loads):")
            for problem in startup:
                print(f"    {problem}")
            await cdp.call(f"() => {WATCH_JS}")

            failures = 0
            first = json.loads(paths[0].read_text())
            runs = [(p.stem, json.loads(p.read_text()), None) for p in paths]
            runs += [(f"{paths[0].stem}, {label} (negative control)", wf, must)
                     for label, wf, must in broken_copies(first)]
            for name, workflow, must_report in runs:
                cdp.events.clear()
                res = await cdp.call(LOAD_JS, workflow, name, timeout=120)
                await cdp.call(CLOSE_DIALOGS_JS)
                problems, ignored = console_problems(cdp.events)
                problems += [f"{s['kind']}: {s['text']}" for s in res["seen"]]
                problems += [f"dialog still open: {t}" for t in res["open_dialogs"]]
                if must_report is None:
                    api = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
                    problems += prompt_differences(res["prompt"], api)
                    ok = not problems
                else:  # a control passes when the frontend reported what is wrong with it
                    ok = any(must_report in p for p in problems)
                failures += not ok
                print(f"\n[{'PASS' if ok else 'FAIL'}] {name}: {res['nodes']} nodes loaded, "
                      f"{len(ignored)} blocked off-machine registry look-up(s) ignored")
                for p in problems:
                    print(f"    {p}")
                if must_report is None and screenshot is not None and name == paths[0].stem:
                    await cdp.call("() => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 500)))")
                    shot = await cdp.send("Page.captureScreenshot", {"format": "png"})
                    screenshot.write_bytes(base64.b64decode(shot["data"]))
                    print(f"    screenshot: {screenshot}")
            cdp.reader.cancel()
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium",
                    help="Chromium binary (default: chromium on PATH)")
    ap.add_argument("--screenshot", type=Path, help="write a PNG of the first workflow as loaded")
    ap.add_argument("workflows", nargs="*", type=Path,
                    help="UI-format workflows with an API twin in workflows/api/ (default: workflows/*.json)")
    args = ap.parse_args(argv)
    paths = args.workflows or [Path(p) for p in sorted(glob.glob(str(REPO / "workflows" / "*.json")))]

    from honestface_core.testmodels import write_test_models

    with tempfile.TemporaryDirectory(prefix="hf_frontend_") as tmp:
        root = Path(tmp)
        write_test_models(root / "models")
        yaml = comfy_harness.write_extra_model_paths(root / "extra_model_paths.yaml", root / "models")
        server = comfy_harness.ComfyServer(root / "server", yaml)
        # A fresh user folder would open the template browser on first visit; mark the tutorial as seen.
        settings = server.base_dir / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True)
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
        with server:
            put_input_images([json.loads(p.read_text()) for p in paths], server.input_dir)
            chromium, port = start_chromium(args.chromium, root / "chromium-profile")
            try:
                failures = asyncio.run(check(server, port, paths, args.screenshot))
            finally:
                os.killpg(chromium.pid, 15)
                chromium.wait(timeout=20)
    print(f"\n{failures} check(s) failed" if failures else f"\n{len(paths)} workflows clean, negative controls caught")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

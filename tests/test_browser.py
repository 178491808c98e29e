"""A real browser against the real ComfyUI page: headless Chromium (driven by Playwright) opens the
page served by the ``comfy_server`` fixture with this pack installed.

What it checks:
- the page boots, fetches ``/extensions/comfyui-unhype/unhype.js`` and registers our extension
  (``unhype.report``) with no console error or warning coming from it (nor the frontend's notice
  about importing an internal module); our node types are registered;
- every UI-format ``workflows/*.json`` loads through ``app.loadGraphData`` with no missing node
  types, the same nodes and links as the file, and the page's own prompt builder
  (``app.graphToPrompt``) gives the same API graph as the harness's converter;
- the SD1.5 workflow, with the models it names present, shows no node errors; a screenshot of it
  goes to ``$TMPDIR/unhype-browser/`` (and to ``docs/`` with ``UNHYPE_UPDATE_SCREENSHOT=1``, which
  also makes each graph's screenshot its template thumbnail ``workflows/<name>.jpg``);
- queued from the page (``app.queuePrompt``) against the random SD1.5 checkpoint and a random
  UnHype network, the Conditioners' report text appears on the nodes (web/unhype.js).

Needs Chromium (``/usr/bin/chromium`` from Debian's ``chromium`` package, or ``$UNHYPE_CHROMIUM``)
and the Python package ``playwright`` (its own browser download is not used). Skips otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

import comfy_host as ch

pytestmark = [pytest.mark.host, pytest.mark.browser]

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
EXTENSION_NAME = "unhype.report"  # app.registerExtension({name}) in web/unhype.js
EXTENSION_URL = f"/extensions/{ch.PACK_DIR_NAME}/unhype.js"
# Hang guards for what the browser does alone (launch, page load, one action): seconds when idle,
# and so large that only a hang reaches them; waits on the server's work use its progress.
BROWSER_HANG_MS = 900_000
PACK_NODES = ("UnHypeLoader", "UnHypeConditioner", "UnHypeTextEncode", "UnHypeApplyDynamicLoRA")
# how our script shows up in the page's errors: its URL, or the extension name in the frontend's
# "Error calling extension 'unhype.report' ..." / "Error loading extension <url>" messages
OUR_NEEDLES = (f"/extensions/{ch.PACK_DIR_NAME}/", EXTENSION_NAME)
# '[ComfyUI Notice] "scripts/widgets.js" is an internal module, not part of the public API...'
NOTICE = "[ComfyUI Notice]"
SCREENSHOT_DIR = Path(tempfile.gettempdir()) / "unhype-browser"
DOCS_SCREENSHOT = REPO / "docs" / "screenshot-sd15-workflow.png"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
# Page settings (POST /settings before the page loads): no first-run template, no minimap.
PAGE_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,  # full-detail drawing at any zoom (screenshot)
}

# The frontend (comfyui-frontend-package 1.49) sets window.app after app.setup() and removes the
# #splash-loader element when the Vue app has mounted.
READY_JS = """() => !!(window.app && window.app.vueAppReady && window.app.canvas && window.LiteGraph
    && window.comfyAPI && !document.getElementById('splash-loader'))"""

# Records the missing node types that loadGraphData reports to extensions (afterConfigureGraph).
RECORDER_JS = """() => {
  window.__unhypeMissing = [];
  window.__unhypeExecErrors = [];
  window.__unhypeDone = [];
  app.registerExtension({
    name: 'unhype.test.recorder',
    afterConfigureGraph(missing) {
      for (const m of missing ?? []) {
        window.__unhypeMissing.push(typeof m === 'string' ? m : m.type);
      }
    },
  });
  const api = window.comfyAPI.api.api;
  api.addEventListener('execution_error', (e) => { window.__unhypeExecErrors.push(e.detail); });
  api.addEventListener('execution_success', (e) => { window.__unhypeDone.push(e.detail); });
}"""

LOAD_JS = """async ([wf, name]) => {
  window.__unhypeMissing = [];
  await app.loadGraphData(wf, true, true, name, {silentAssetErrors: true});
  const g = app.rootGraph ?? app.graph;
  const links = g.links instanceof Map ? [...g.links.values()] : Object.values(g.links ?? {});
  return {
    missing: [...window.__unhypeMissing],
    nodes: g._nodes.map((n) => ({id: String(n.id), type: n.type,
                                 registered: n.type in LiteGraph.registered_node_types,
                                 has_errors: !!n.has_errors})),
    links: links.filter(Boolean).map((l) => [String(l.id), String(l.origin_id), l.origin_slot,
                                              String(l.target_id), l.target_slot, l.type]),
  };
}"""


def _chromium() -> str | None:
    env = os.environ.get("UNHYPE_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _ui_workflows() -> list[Path]:
    out = []
    for path in sorted(WORKFLOWS.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data:
            out.append(path)
    return out


@pytest.fixture(scope="session")
def chromium_exe() -> str:
    """Skips early (before the session-scoped ComfyUI fixtures) without playwright or Chromium."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("browser tests need the Python package 'playwright' (requirements-dev.txt)")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium: `apt-get install chromium` (Debian) or set UNHYPE_CHROMIUM")
    return exe


@pytest.fixture(scope="module")
def browser(chromium_exe):
    from playwright.sync_api import sync_playwright

    exe = chromium_exe
    try:
        pw = sync_playwright().start()
    except Exception as e:  # e.g. its driver cannot run here
        pytest.skip(f"Playwright did not start: {str(e).splitlines()[0]}")
    try:
        # Playwright gives every launch a fresh temporary --user-data-dir.
        b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
                               timeout=BROWSER_HANG_MS)
    except Exception as e:  # any launch failure means "no usable browser"
        pw.stop()
        pytest.skip(f"Chromium at {exe} did not start: {str(e).splitlines()[0]}")
    try:
        yield b
    finally:
        b.close()
        pw.stop()


class PageSession:
    def __init__(self, page):
        self.page = page
        self.console: list[tuple[str, str, str]] = []  # (type, text, source url)
        self.page_errors: list[str] = []
        self.responses: dict[str, int] = {}  # url path -> status

        page.on("console", self._on_console)
        page.on("pageerror", lambda err: self.page_errors.append(f"{err}\n{err.stack or ''}"))
        page.on("response", self._on_response)

    def _on_console(self, msg):
        loc = msg.location or {}
        self.console.append((msg.type, msg.text, loc.get("url", "")))

    def _on_response(self, resp):
        from urllib.parse import urlsplit

        self.responses.setdefault(urlsplit(resp.url).path, resp.status)

    def our_errors(self) -> list[str]:
        """Console errors and warnings and uncaught exceptions that come from (or name) our
        extension, and the frontend's notices about internal modules (only an extension's import
        causes those, and ours is the only pack on this server)."""
        def ours(text):
            return any(n in text for n in OUR_NEEDLES)

        out = [f"console.{t}: {text} ({url})" for t, text, url in self.console
               if t in ("error", "warning") and (ours(url) or ours(text) or NOTICE in text)]
        return out + [e for e in self.page_errors if ours(e)]


@pytest.fixture(scope="module")
def sd15_models(comfy_server, sd15_checkpoint, unhype_pack, tmp_path_factory):
    """The random SD1.5 checkpoint and a random UnHype network in the server's model folders,
    under the names workflows/sd15_unhype.json uses (before the page loads its combo lists)."""
    import sys

    from test_nodes_server import random_sd1_network

    workflow = json.loads((WORKFLOWS / "sd15_unhype.json").read_text())
    by_type = {n["type"]: n for n in workflow["nodes"]}
    core = sys.modules[unhype_pack.__name__ + ".unhype"]
    net = random_sd1_network(tmp_path_factory.mktemp("unhype_net") / "net.safetensors", core)
    return {
        "ckpt": comfy_server.add_model("checkpoints", sd15_checkpoint,
                                       name=by_type["CheckpointLoaderSimple"]["widgets_values"][0]),
        "unhype": comfy_server.add_model("unhype", net,
                                         name=by_type["UnHypeLoader"]["widgets_values"][0]),
    }


@pytest.fixture(scope="module")
def session(chromium_exe, comfy_server, sd15_models, browser):
    status, _ = comfy_server.request("POST", "/settings", PAGE_SETTINGS)
    assert status == 200
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    page = context.new_page()
    page.set_default_timeout(BROWSER_HANG_MS)
    s = PageSession(page)
    t0 = time.monotonic()
    page.goto(comfy_server.url + "/", wait_until="domcontentloaded")
    page.wait_for_function(READY_JS, timeout=BROWSER_HANG_MS)
    page.evaluate(RECORDER_JS)
    print(f"\npage ready in {time.monotonic() - t0:.1f}s")
    try:
        yield s
    finally:
        context.close()


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def test_page_registers_the_extension(session):
    page = session.page
    assert session.responses.get(EXTENSION_URL) == 200, (
        f"the page did not fetch {EXTENSION_URL}: {sorted(session.responses)}")
    names = page.evaluate("() => app.extensions.map((e) => e.name)")
    assert EXTENSION_NAME in names
    registered = page.evaluate(
        "(types) => types.filter((t) => t in LiteGraph.registered_node_types)", list(PACK_NODES))
    assert registered == list(PACK_NODES)
    # web/unhype.js hooks onExecuted of the two report nodes (beforeRegisterNodeDef)
    hooked = page.evaluate("""() => ['UnHypeConditioner', 'UnHypeTextEncode'].map(
        (t) => typeof LiteGraph.registered_node_types[t].prototype.onExecuted === 'function')""")
    assert hooked == [True, True]
    assert session.our_errors() == []


@pytest.mark.parametrize("path", _ui_workflows(), ids=lambda p: p.name)
def test_workflow_loads_without_missing_nodes(session, object_info, path):
    from _workflow_api import to_api

    workflow = json.loads(path.read_text())
    got = session.page.evaluate(LOAD_JS, [workflow, None])
    assert got["missing"] == [], f"the page reports missing node types: {got['missing']}"
    unregistered = [n["type"] for n in got["nodes"] if not n["registered"]]
    assert unregistered == []
    assert sorted((n["id"], n["type"]) for n in got["nodes"]) == sorted(
        (str(n["id"]), n["type"]) for n in workflow["nodes"])
    assert sorted(tuple(link) for link in got["links"]) == sorted(
        (str(i), str(a), a_slot, str(b), b_slot, kind)
        for i, a, a_slot, b, b_slot, kind in workflow["links"])
    # Only loaders of model files that this server does not have may show an error.
    errors = {n["type"] for n in got["nodes"] if n["has_errors"]}
    assert errors <= {"CheckpointLoaderSimple", "UNETLoader", "DualCLIPLoader", "VAELoader",
                      "CLIPLoader", "LoraLoaderModelOnly", "UnHypeLoader"}, errors
    # The page's prompt builder agrees with the harness's UI->API converter.
    prompt = session.page.evaluate("async () => (await app.graphToPrompt()).output")
    expected = to_api(workflow, object_info)
    strip = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
    assert strip == {k: {"class_type": v["class_type"], "inputs": v["inputs"]}
                     for k, v in expected.items()}
    assert session.our_errors() == []
    _graph_thumbnail(session.page, path)


def _graph_thumbnail(page, path: Path) -> None:
    """A screenshot of the loaded graph; with UNHYPE_UPDATE_SCREENSHOT=1 it becomes the template
    thumbnail (workflows/<name>.jpg, which the template browser shows)."""
    from PIL import Image

    # the loaders' missing-model marks are this test server's, not the template's
    page.evaluate("""() => (app.rootGraph ?? app.graph)._nodes.forEach(
        (n) => { n.has_errors = false; })""")
    page.evaluate(FIT_JS)
    page.wait_for_timeout(800)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOT_DIR / f"{path.stem}_graph.png"
    page.screenshot(path=str(shot), clip=page.evaluate(GRAPH_CLIP_JS))
    assert not _is_blank(shot), f"the screenshot looks blank: {shot}"
    if os.environ.get("UNHYPE_UPDATE_SCREENSHOT") == "1":
        with Image.open(shot) as image:
            image = image.convert("RGB")
        # 4:3 like the browser's cards, padded with the canvas colour rather than cropped
        width, height = image.width, max(image.height, image.width * 3 // 4)
        card = Image.new("RGB", (width, height), image.getpixel((2, 2)))
        card.paste(image, (0, (height - image.height) // 2))
        card.thumbnail((768, 768))
        card.save(path.with_suffix(".jpg"), quality=85, optimize=True)


BLUEPRINT_JS = """async ([blueprint]) => {
  window.__unhypeMissing = [];
  await app.loadGraphData(blueprint, true, true, 'UnHype erase', {silentAssetErrors: true});
  const g = app.rootGraph ?? app.graph;
  const node = g._nodes[0];
  const prompt = (await app.graphToPrompt()).output;
  return {
    missing: [...window.__unhypeMissing],
    nodes: g._nodes.length,
    inner: node.subgraph.nodes.map((n) => n.type).sort(),
    inputs: node.inputs.filter((i) => !i.widget).map((i) => [i.name, i.type]),
    widgets: (node.widgets ?? []).map((w) => w.name),
    outputs: node.outputs.map((o) => [o.name, o.type]),
    prompt: Object.values(prompt).map((n) => n.class_type).sort(),
  };
}"""


def test_subgraph_blueprint_loads_as_the_three_node_recipe(session):
    """subgraphs/UnHype erase.json (offered by ComfyUI as a blueprint): one node whose inside is
    the Loader, a Conditioner per prompt and Apply Dynamic LoRA."""
    blueprint = json.loads((REPO / "subgraphs" / "UnHype erase.json").read_text())
    got = session.page.evaluate(BLUEPRINT_JS, [blueprint])
    recipe = sorted(["UnHypeLoader", "UnHypeConditioner", "UnHypeConditioner",
                     "UnHypeApplyDynamicLoRA"])
    assert got["missing"] == [] and got["nodes"] == 1
    assert got["inner"] == recipe and got["prompt"] == recipe
    slots = [["positive", "CONDITIONING"], ["negative", "CONDITIONING"], ["model", "MODEL"]]
    assert got["inputs"] == slots and got["outputs"] == slots
    assert got["widgets"] == ["unhype_name", "strength", "mode"]  # promoted from the inside
    assert session.our_errors() == []


# The whole graph in view.
FIT_JS = """() => {
    app.canvas.deselectAll?.();
    app.canvas.fitViewToSelectionAnimated?.({duration: 1});
    app.canvas.setDirty(true, true);
}"""

# The graph's bounding box on the page, in CSS pixels (for a screenshot of the graph only).
GRAPH_CLIP_JS = """() => {
  const c = app.canvas, ds = c.ds, rect = c.canvas.getBoundingClientRect();
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of (app.rootGraph ?? app.graph)._nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - title);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const pad = 24;
  const sx = (x) => rect.left + (x + ds.offset[0]) * ds.scale;
  const sy = (y) => rect.top + (y + ds.offset[1]) * ds.scale;
  const left = Math.max(rect.left, sx(x0) - pad), top = Math.max(rect.top, sy(y0) - pad);
  const right = Math.min(rect.right, sx(x1) + pad), bottom = Math.min(rect.bottom, sy(y1) + pad);
  return {x: left, y: top, width: right - left, height: bottom - top};
}"""


def _is_blank(png: Path) -> bool:
    from PIL import Image

    with Image.open(png) as im:
        small = im.convert("RGB").resize((160, 100))
        colors = small.getcolors(maxcolors=160 * 100) or []
    return len(colors) < 20


def wait_for_run(page, comfy_server, watch: ch.Watch, done_js: str) -> None:
    """Until `done_js` is true on the page; fails only if the server's work hangs."""
    from playwright.sync_api import TimeoutError as PageTimeout

    while True:
        try:
            page.wait_for_function(done_js, timeout=5_000, polling=250)
            return
        except PageTimeout:
            watch.check(lambda: comfy_server.log(4000))


def test_sd15_workflow_screenshot_and_run(session, comfy_server):
    page = session.page
    workflow = json.loads((WORKFLOWS / "sd15_unhype.json").read_text())
    got = page.evaluate(LOAD_JS, [workflow, "sd15_unhype.json"])
    assert got["missing"] == []
    assert [n["type"] for n in got["nodes"] if n["has_errors"]] == []
    page.evaluate(FIT_JS)
    page.wait_for_timeout(800)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "sd15_page.png"))
    shot = SCREENSHOT_DIR / "sd15_workflow.png"
    page.screenshot(path=str(shot), clip=page.evaluate(GRAPH_CLIP_JS))
    print(f"\nscreenshots: {SCREENSHOT_DIR}/sd15_*.png")
    assert not _is_blank(shot), f"the screenshot looks blank: {shot}"
    if os.environ.get("UNHYPE_UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    # Queue it from the page, small and short, and wait for the reports on the nodes.
    page.evaluate("""() => {
        const g = app.rootGraph ?? app.graph;
        const set = (type, name, value) => {
            for (const n of g._nodes.filter((n) => n.type === type)) {
                n.widgets.find((w) => w.name === name).value = value;
            }
        };
        set('EmptyLatentImage', 'width', 64);
        set('EmptyLatentImage', 'height', 64);
        set('KSampler', 'steps', 2);
        window.__unhypeExecErrors = [];
    }""")
    t0 = time.monotonic()
    watch = comfy_server.watch(180, "the run queued from the page")
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")
    wait_for_run(page, comfy_server, watch, """() => {
        if (window.__unhypeExecErrors.length) return true;
        const g = app.rootGraph ?? app.graph;
        const nodes = g._nodes.filter((n) => n.type === 'UnHypeConditioner');
        return nodes.length === 2 && nodes.every(
            (n) => (n.widgets ?? []).some((w) => w.name === 'unhype_report' && w.value));
    }""")
    wait_for_run(page, comfy_server, watch,
                 "() => window.__unhypeExecErrors.length || window.__unhypeDone.length")
    errors = page.evaluate("() => window.__unhypeExecErrors")
    assert errors == [], json.dumps(errors, indent=1)[:4000]
    reports = page.evaluate("""() => (app.rootGraph ?? app.graph)._nodes
        .filter((n) => n.type === 'UnHypeConditioner')
        .map((n) => n.widgets.find((w) => w.name === 'unhype_report').value)""")
    print(f"ran from the page in {time.monotonic() - t0:.1f}s; report: {reports[0]!r}")
    assert len(reports) == 2 and all("entry 1" in r for r in reports), reports
    # display only: the report widget is not saved into the workflow
    saved = page.evaluate("""() => (app.rootGraph ?? app.graph).serialize().nodes
        .filter((n) => n.type === 'UnHypeConditioner').map((n) => n.widgets_values ?? [])""")
    assert all(not any(isinstance(v, str) and "entry 1" in v for v in values) for values in saved)
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOT_DIR / "sd15_page_after_run.png"))
    page.screenshot(path=str(SCREENSHOT_DIR / "sd15_workflow_after_run.png"),
                    clip=page.evaluate(GRAPH_CLIP_JS))
    assert session.our_errors() == []

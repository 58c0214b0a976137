// HonestFace frontend extension (see docs/nodes.md, "What the nodes show"):
// 1. shows the text result of every HonestFace node that produces one (scores, reports, status lines) on the node
//    itself: ComfyUI's frontends draw the images a node returns in its "ui" dict but not its "text". The panel is
//    not a value: it is not saved in the workflow and not sent with the prompt.
// 2. when a workflow loads, names the model files its HonestFace loaders ask for that are not installed (the
//    loaders list only files that exist) and that the frontend's own check does not report: the frontend
//    reports the files a node declares in its "models" metadata; insightface packs, diffusers folders and
//    landmark models are not single files it can check.
import { app } from "../../scripts/app.js";

const PLACEHOLDER = "Run the workflow to see the result here.";
const PANEL_STYLE = [
  "box-sizing:border-box", "width:100%", "height:100%", "overflow:auto", "padding:4px 6px", "border-radius:6px",
  "background:var(--comfy-input-bg, #222)", "color:var(--input-text, #ddd)",
  "font:12px/1.35 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace",
].join(";");
const PRE_STYLE = "margin:0;white-space:pre-wrap;overflow-wrap:anywhere";

/** Nodes of this pack with a text result: a STRING output, or an output node without outputs (its status). */
function hasTextResult(nodeData) {
  const ours = nodeData.name?.startsWith("HonestFace") && nodeData.category?.startsWith("HonestFace/");
  const outputs = nodeData.output ?? [];
  return ours && (outputs.includes("STRING") || (nodeData.output_node && outputs.length === 0));
}

function addResultPanel(node) {
  const panel = document.createElement("div");
  panel.className = "honestface-result";
  panel.style.cssText = PANEL_STYLE;
  const summary = document.createElement("pre");
  summary.className = "honestface-result-text";
  summary.style.cssText = PRE_STYLE + ";opacity:0.6";
  summary.textContent = PLACEHOLDER;
  const details = document.createElement("details");
  details.hidden = true;
  const label = document.createElement("summary");
  label.textContent = "report (JSON)";
  label.style.cssText = "cursor:pointer;opacity:0.7;margin-top:4px";
  const report = document.createElement("pre");
  report.className = "honestface-result-report";
  report.style.cssText = PRE_STYLE;
  details.append(label, report);
  panel.append(summary, details);
  // Keep wheel scrolling inside the panel instead of zooming the canvas.
  panel.addEventListener("wheel", (e) => e.stopPropagation(), { passive: true });

  const widget = node.addDOMWidget("honestface_result", "honestface_result", panel, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => 64,
  });
  widget.serialize = false;
  return { panel, summary, details, report };
}

function showResult(parts, message) {
  const text = (message?.text ?? []).join("\n");
  const summary = (message?.summary ?? []).join("\n");
  if (!text && !summary) return;
  parts.summary.textContent = summary || text;
  parts.summary.style.opacity = "1";
  parts.report.textContent = summary ? text : "";
  parts.details.hidden = !summary;
  parts.panel.dataset.state = "result";
}

const TOOLTIPS = {}; // node type -> input name -> tooltip (it says where the files go)

/** "<title>: <input> '<value>'" for every HonestFace loader value that is not among its menu's files. */
function missingModels(graph) {
  const missing = [];
  for (const node of graph?.nodes ?? []) {
    if (!node.type?.startsWith("HonestFace")) continue;
    const declared = new Set((node.properties?.models ?? []).map((m) => m.name));
    for (const widget of node.widgets ?? []) {
      if (widget.type !== "combo" || typeof widget.value !== "string" || declared.has(widget.value)) continue;
      const values = widget.options?.values;
      const options = typeof values === "function" ? values(widget, node) : values;
      if (Array.isArray(options) && !options.includes(widget.value)) {
        const where = TOOLTIPS[node.type]?.[widget.name] ?? "";
        missing.push(`${node.title}: ${widget.name} '${widget.value}' is not installed. ${where}`.trim());
      }
    }
  }
  return missing;
}

app.registerExtension({
  name: "HonestFace.NodeResults",
  async afterConfigureGraph() {
    const missing = missingModels(app.graph);
    if (!missing.length) return;
    app.extensionManager?.toast?.add({
      severity: "warn",
      summary: "HonestFace: model files missing",
      detail: missing.join("\n") + "\nSee docs/nodes.md (Model folders) of the HonestFace pack; nothing is downloaded.",
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name?.startsWith("HonestFace")) return;
    const inputs = { ...nodeData.input?.required, ...nodeData.input?.optional };
    TOOLTIPS[nodeData.name] = Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, v?.[1]?.tooltip]));
    if (!hasTextResult(nodeData)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.honestfaceResult = addResultPanel(this);
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (this.honestfaceResult) showResult(this.honestfaceResult, message);
    };
  },
});

// UnHype: show the report of the UnHype nodes that write one on the node after it runs.
// Public frontend API only (scripts/app.js and the node's addDOMWidget): scripts/widgets.js is
// internal and the frontend warns when a pack imports it.
import { app } from "../../scripts/app.js";

const REPORT_NODES = new Set([
  "UnHypeLoader", "UnHypeConditioner", "UnHypeTextEncode", "UnHypeBakeLoRA",
  "UnHypeErasureCheck", "UnHypeAudit",
]);
const REPORT = "unhype_report";

function reportWidget(node) {
  const existing = node.widgets?.find((w) => w.name === REPORT);
  if (existing) return existing;
  const area = document.createElement("textarea");
  area.className = "comfy-multiline-input";
  area.readOnly = true;
  area.style.opacity = 0.75;
  const widget = node.addDOMWidget(REPORT, "customtext", area, {
    getValue: () => area.value,
    setValue: (value) => {
      area.value = value;
    },
    serialize: false, // display only: never sent with the prompt
  });
  widget.serialize = false; // nor saved into the workflow
  return widget;
}

app.registerExtension({
  name: "unhype.report",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!REPORT_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      reportWidget(this).value = (message?.text ?? []).join("\n");
      const size = this.computeSize();
      this.setSize([Math.max(this.size[0], size[0]), Math.max(this.size[1], size[1])]);
      this.setDirtyCanvas(true, true);
    };
  },
});

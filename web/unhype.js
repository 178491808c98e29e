// UnHype: show the report of UnHype Conditioner / UnHype Text Encode on the node after it runs.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const REPORT_NODES = new Set(["UnHypeConditioner", "UnHypeTextEncode"]);

function reportWidget(node) {
  let widget = node.widgets?.find((w) => w.name === "unhype_report");
  if (widget) return widget;
  widget = ComfyWidgets.STRING(node, "unhype_report", ["STRING", { multiline: true }], app).widget;
  if (widget.inputEl) {
    widget.inputEl.readOnly = true;
    widget.inputEl.style.opacity = 0.75;
  }
  widget.serialize = false; // display only: never saved into the workflow or sent with the prompt
  if (widget.options) widget.options.serialize = false;
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

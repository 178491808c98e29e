"""What a network tells a stranger: its concept manifest, its evaluation, its model card.

All three are read from the network's own record (`NetworkInfo`, whose `training` dict the
Trainer fills), so each fact has one source: the file carries the manifest and the evaluation as
`unhype.concepts` / `unhype.eval` for model hosts (unhype/fileformat.py), the Trainer writes the
card beside the network, and the Loader's report shows the summary. An Erasure Check cannot
write into the network file (the node gets the network, not its file), so its report ends with a
JSON block (`erasure_check_block`) that the user keeps and `model_card` takes.

Host-free and torch-free.
"""

from __future__ import annotations

import json
import math

from .families import family

REPOSITORY = "https://github.com/unhype/comfyui-unhype"
THREAT_MODEL = f"{REPOSITORY}#what-it-protects-against-and-what-it-does-not"
PUBLISHING = f"{REPOSITORY}/blob/main/docs/publishing.md"
#: how the Erasure Check report introduces its JSON block
ERASURE_CHECK_LINE = "unhype.eval erasure_check (keep it with the network for its card): "


def concept_manifest(training: dict) -> dict:
    """What the network erases, as its training record says: the concepts and their anchors,
    or only their count and SHA-256 when the author hid them. A network without a record
    (hand-built, or older than records) says it has none."""
    if not training:
        return {"recorded": False}
    manifest = {"recorded": True, "hidden": "concepts" not in training,
                "count": training.get("concept_count"), "sha256": training.get("concepts_sha256")}
    if not manifest["hidden"]:
        anchors = training.get("anchors") or {}
        manifest["concepts"] = [{"erase": name, "anchor": anchors.get(name)}
                                for name in training["concepts"]]
    return manifest


def evaluation(training: dict, erasure_check: dict | None = None) -> dict:
    """The network's measurements: the Trainer's judge-free separation check and, when one ran
    and its block was kept, an Erasure Check's scores and judge."""
    block = {"separation": training.get("separation")}
    if erasure_check is not None:
        block["erasure_check"] = erasure_check
    return block


def erasure_check_block(judge: str, concept: str, efficacy: float, specificity: float,
                        erased_pairs: int, kept_pairs: int) -> dict:
    """An Erasure Check's result as `evaluation` records it (NaN scores become null: JSON has
    no NaN)."""
    def score(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 4)

    return {"judge": judge, "concept": concept, "efficacy": score(efficacy),
            "specificity": score(specificity), "erased_pairs": erased_pairs,
            "kept_pairs": kept_pairs}


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def erases_line(manifest: dict) -> str:
    if not manifest["recorded"]:
        return "no training record (a hand-built or older network): unknown"
    if manifest["hidden"]:
        return (f"hidden concepts ({manifest['count'] or '?'}; SHA-256 of the list "
                f"{manifest['sha256'] or '?'})")
    def anchor(value) -> str:  # "": the concept is left out of the prompt (unhype/prompts.py)
        return "" if value is None else f" (-> {value or 'left out'})"

    return ", ".join(c["erase"] + anchor(c["anchor"]) for c in manifest["concepts"])


def separation_line(separation: dict | None) -> str:
    if not separation:
        return "separation check: not recorded"
    verdict = "separated" if separation["separated"] else "NOT SEPARATED"
    return (f"separation check at step {separation['step']}: {verdict} (erase prompts trigger "
            f"{separation['trigger']:.3g}x the strongest retain prompt; ESD residual "
            f"{separation['residual']:.2f}, 1 = no effect)")


def erasure_check_line(check: dict) -> str:
    return (f"Erasure Check ({check['judge']}, concept {check['concept']!r}): efficacy "
            f"{_percent(check['efficacy'])} of {check['erased_pairs']} erased-prompt pairs, "
            f"specificity {_percent(check['specificity'])} of {check['kept_pairs']} kept pairs")


def summary(info, evaluated: dict) -> list[str]:
    """The card in a few lines, for the Loader's report."""
    base = family(info.base_arch)
    lines = [f"erases: {erases_line(concept_manifest(info.training))}",
             f"made for: {base.label} ({info.base_arch}), trigger: {info.embedding_source}",
             separation_line(evaluated.get("separation"))]
    if evaluated.get("erasure_check"):
        lines.append(erasure_check_line(evaluated["erasure_check"]))
    return lines


def model_card(info, *, file_name: str, hash_sha256: str,
               erasure_check: dict | None = None, preview: str | None = None) -> str:
    """A Markdown card to paste into a model host's page: what it erases, for which model, how
    it was measured, its limits, how to use it, its licence; `preview`: the file name of the
    before/after grid drawn beside it."""
    base = family(info.base_arch)
    manifest = concept_manifest(info.training)
    measured = evaluation(info.training, erasure_check)
    training = info.training
    settings = ", ".join(f"{key} {training[key]}" for key in
                         ("steps", "objective", "eta", "learning_rate", "retain_count", "seed")
                         if key in training)
    lines = [
        f"# {info.title}",
        "",
        "An UnHype concept-erasure network for ComfyUI: a hypernetwork that reads each prompt "
        "and gives the prompts that carry an erased concept a LoRA steering away from it; "
        "every other prompt gets the untouched model.",
        "",
        *([f"![The same prompts and noise without and with the network]({preview})", ""]
          if preview else []),
        f"- **Erases:** {erases_line(manifest)}",
        f"- **Base model family:** {base.label} (ModelSpec architecture "
        f"`{base.modelspec_architecture}/unhype`)",
        f"- **Text encoder it reads (trigger):** {info.embedding_source}",
        f"- **Target layers:** preset `{info.target_preset}`",
        f"- **Author:** {info.author}",
        f"- **File:** `{file_name}`, tensor SHA-256 (ModelSpec `hash_sha256`, Civitai AutoV3) "
        f"`{hash_sha256}`",
        "",
        "## How it was measured",
        "",
        f"- {separation_line(measured['separation'])}. The check needs no judge model: it "
        "compares the network's LoRA on held-out erase prompts and on the retain prompts, and "
        "the ESD loss with and without it.",
    ]
    if "erasure_check" in measured:
        lines.append(f"- {erasure_check_line(measured['erasure_check'])}.")
    else:
        lines.append("- No Erasure Check result was kept with this network (UnHype Erasure "
                     "Check compares images with and without it, judged offline).")
    if settings:
        lines.append(f"- Training: {settings}.")
    lines += [
        "",
        "## Limits",
        "",
        "- Recognition is by the prompt's embedding: paraphrases, indirect descriptions and other "
        "languages that land far from a trained concept can get through.",
        "- It is a runtime adapter: anyone who can edit the graph can remove it and get the "
        "original model back; the model file still knows everything.",
        f"- Only for {base.label} models. See the threat model: {THREAT_MODEL}",
        "",
        "## How to use",
        "",
        "1. Put the file in `ComfyUI/models/unhype/` and install the UnHype node pack "
        f"({REPOSITORY}).",
        "2. **UnHype Loader** loads it (turn on `verify_hash` to check the file against the hash "
        "above).",
        "3. **UnHype Conditioner** on the positive and the negative prompt, and **Apply Dynamic "
        "LoRA** on the model, both fed by the Loader.",
        "",
        "It is not an A1111 hypernetwork nor a LoRA: ComfyUI's Hypernetwork and LoRA loaders "
        "cannot read it. A static LoRA for one prompt can be made with UnHype Bake LoRA.",
        "",
        "## Licence",
        "",
        f"{base.licence} (the base model's terms: the network is trained on its predictions).",
        "",
    ]
    return "\n".join(lines)


def erasure_check_json(block: dict) -> str:
    """The line an Erasure Check report ends with."""
    return ERASURE_CHECK_LINE + json.dumps(block)

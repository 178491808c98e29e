"""The UnHype file: one .safetensors with the hypernetwork tensors and self-describing metadata.

Loading checks the header, the metadata and every tensor name and shape before any module is
built, and never unpickles anything. Metadata also carries the ModelSpec 1.0.1 keys (MUST and
SHOULD, and the CAN keys that apply) so model hosts can show what the file is, and the concept
manifest and evaluation of unhype/card.py.
"""

import hashlib
import json
import math
import os
from datetime import UTC, datetime

import torch
from safetensors import safe_open

from .card import REPOSITORY, concept_manifest, evaluation, summary
from .families import family
from .files import save_atomically
from .hypernet import HyperNetConfig, HyperNetwork
from .network import NetworkInfo, UnHypeNetwork
from .targets import Target

FORMAT_NAME = "unhype"
FORMAT_VERSION = 1
IMPLEMENTATION_URL = REPOSITORY
#: the ModelSpec version both kinds of file (networks, baked LoRAs) follow: 1.0.1 as kohya-ss
#: sd-scripts emits it (library/sai_model_spec.py), whose MUST keys add `resolution`
MODELSPEC_VERSION = "1.0.1"
HASH_KEY = "modelspec.hash_sha256"
USAGE_HINT = (
    "Not a LoRA: load it with UnHype Loader (ComfyUI pack comfyui-unhype), put UnHype "
    "Conditioner on both prompts and Apply Dynamic LoRA on the model."
)


#: The gate's threshold (unhype/gate.py); files saved before the gate lack it and load ungated.
GATE_KEY = "unhype.gate_threshold"


class UnHypeFileError(ValueError):
    """A file that cannot be used as an UnHype network, with the reason and the way out."""


def concepts_digest(concepts: list[str]) -> str:
    """Stable fingerprint of a concept list, for authors who do not publish the list itself."""
    joined = "\n".join(sorted(c.strip().lower() for c in concepts))
    return hashlib.sha256(joined.encode()).hexdigest()


def modelspec(**fields: str) -> dict[str, str]:
    """`modelspec.`-prefixed keys, the spec version first."""
    return {"modelspec.sai_model_spec": MODELSPEC_VERSION,
            **{f"modelspec.{key}": value for key, value in fields.items()}}


def tensor_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """ModelSpec's hash_sha256: SHA-256 of the tensor data as safetensors lays it out (after the
    header; tensors of one dtype in name order), "0x"-prefixed. One tensor copied at a time."""
    if len({t.dtype for t in tensors.values()}) > 1:
        raise ValueError("tensor_sha256 expects tensors of one dtype")
    digest = hashlib.sha256()
    for name in sorted(tensors):
        # flattened: a 0-d tensor (a LoRA's alpha) has no byte view
        digest.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "0x" + digest.hexdigest()


def file_sha256(path: str) -> str:
    """`tensor_sha256` as read back from a file: the SHA-256 of everything after its header,
    which is what ModelSpec defines (and hosts show as AutoV3), in 1 MiB reads."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(8 + int.from_bytes(handle.read(8), "little"))
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return "0x" + digest.hexdigest()


def _metadata(network: UnHypeNetwork, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    info = network.info
    base = family(info.base_arch)
    date = info.training.get("date") or datetime.now(UTC).isoformat(timespec="seconds")
    manifest = concept_manifest(info.training)
    erased = [c["erase"].replace(",", " ") for c in manifest.get("concepts", [])]
    return {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "unhype.base_arch": info.base_arch,
        "unhype.target_preset": info.target_preset,
        "unhype.embedding": json.dumps(
            {"source": info.embedding_source, "dim": network.config.embed_dim}
        ),
        "unhype.config": json.dumps(network.config.to_dict()),
        "unhype.targets": json.dumps([t.to_dict() for t in network.targets]),
        "unhype.training": json.dumps(info.training),
        "unhype.activation_reference": json.dumps(info.activation_reference),
        GATE_KEY: json.dumps(info.gate_threshold),
        "unhype.concepts": json.dumps(manifest),
        "unhype.eval": json.dumps(evaluation(info.training)),
        **modelspec(
            architecture=f"{base.modelspec_architecture}/unhype",
            implementation=IMPLEMENTATION_URL,
            title=info.title,
            resolution=f"{base.resolution}x{base.resolution}",
            description=info.description
            or f"UnHype concept-erasure hypernetwork ({network.config.variant}, rank "
            f"{network.config.rank}, {len(network.targets)} layers)",
            author=info.author,
            date=date,
            hash_sha256=tensor_sha256(tensors),
            license=base.licence,
            usage_hint=USAGE_HINT,
            # the erased concepts go in tags, never in trigger_phrase: a host would tell users
            # to type them
            tags=",".join(["unhype", "concept-erasure", "unlearning", "dynamic-lora", *erased]),
            # not ModelSpec, but what ComfyUI's asset scanner shows as the base model
            base_model=base.modelspec_architecture,
        ),
    }


def save_unhype(path: str, network: UnHypeNetwork,
                dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """Write atomically (unhype/files.py): an interrupted save never leaves a broken file.
    Returns the metadata written."""
    tensors = {
        name: value.detach().to("cpu", dtype).contiguous()
        for name, value in network.module.state_dict().items()
    }
    metadata = _metadata(network, tensors)
    save_atomically(path, tensors, metadata)
    return metadata


def looks_like_lora(names: list[str]) -> bool:
    markers = ("lora_up", "lora_down", "lora_A", "lora_B", ".alpha", "lokr", "hada_")
    return any(marker in name for name in names for marker in markers)


def _parse(metadata: dict, key: str):
    if key not in metadata:
        raise UnHypeFileError(f"metadata key {key!r} is missing")
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as error:
        raise UnHypeFileError(f"metadata key {key!r} is not valid JSON: {error}") from None


def read_header(path: str) -> tuple[dict[str, str], dict[str, list[int]]]:
    """Metadata and tensor shapes, validated as an UnHype file, without loading any tensor."""
    if not os.path.isfile(path):
        raise UnHypeFileError(f"{path}: no such file")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own and OS errors for broken files
        raise UnHypeFileError(
            f"{path}: not a readable .safetensors file ({error}); it may be truncated or "
            "corrupt: download it again"
        ) from None
    if metadata.get("format") != FORMAT_NAME:
        if looks_like_lora(list(shapes)):
            raise UnHypeFileError(
                f"{path}: this is an ordinary LoRA, not an UnHype network: load it with "
                "ComfyUI's LoRA loader instead"
            )
        raise UnHypeFileError(
            f"{path}: not an UnHype network (its metadata has no 'format: {FORMAT_NAME}')"
        )
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise UnHypeFileError(f"{path}: format_version is missing or not a number") from None
    if version > FORMAT_VERSION or version < 1:
        raise UnHypeFileError(
            f"{path}: UnHype format version {version}, but this pack reads up to "
            f"{FORMAT_VERSION}: update the UnHype node pack"
        )
    return metadata, shapes


def _network_skeleton(path: str, metadata: dict) -> UnHypeNetwork:
    try:
        config = HyperNetConfig.from_dict(_parse(metadata, "unhype.config"))
        targets = [Target.from_dict(t) for t in _parse(metadata, "unhype.targets")]
        embedding = _parse(metadata, "unhype.embedding")
        reference = _parse(metadata, "unhype.activation_reference")
        gate = _parse(metadata, GATE_KEY) if GATE_KEY in metadata else None
        if gate is not None and (isinstance(gate, bool) or not isinstance(gate, int | float)
                                 or not math.isfinite(gate) or gate < 0):
            raise ValueError(f"{GATE_KEY} must be a number >= 0 or null, got {gate!r} (without "
                             "the key the network loads with no gate)")
        training = _parse(metadata, "unhype.training")
        for key, value in (("unhype.embedding", embedding), ("unhype.training", training)):
            if not isinstance(value, dict):
                raise ValueError(f"{key} must be a JSON object, got {type(value).__name__}")
        info = NetworkInfo(
            base_arch=metadata.get("unhype.base_arch", ""),
            target_preset=metadata.get("unhype.target_preset", ""),
            embedding_source=str(embedding.get("source", "")),
            title=metadata.get("modelspec.title", ""),
            author=metadata.get("modelspec.author", ""),
            description=metadata.get("modelspec.description", ""),
            training=training,
            activation_reference=float(reference) if reference is not None else None,
            gate_threshold=float(gate) if gate is not None else None,
        )
        if int(embedding.get("dim", -1)) != config.embed_dim:
            raise ValueError(
                f"embedding dim {embedding.get('dim')} disagrees with config {config.embed_dim}"
            )
    except UnHypeFileError as error:
        raise UnHypeFileError(f"{path}: {error}") from None
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise UnHypeFileError(f"{path}: invalid UnHype metadata: {error}") from None
    if not targets:
        raise UnHypeFileError(f"{path}: invalid UnHype metadata: the target list is empty")
    try:
        with torch.device("meta"):
            module = HyperNetwork(config, targets)
    except (RuntimeError, TypeError, ValueError) as error:  # e.g. a negative or fractional size
        raise UnHypeFileError(
            f"{path}: invalid UnHype metadata: it describes no buildable network ({error})"
        ) from None
    return UnHypeNetwork(config, targets, info, module)


def check_hash(path: str, metadata: dict[str, str]) -> str:
    """Recompute the file's tensor SHA-256 and compare it with the one it records: the report
    line on a match, an `UnHypeFileError` on a mismatch (the file is not what it claims)."""
    recorded = metadata.get(HASH_KEY, "")
    if not recorded:
        return "hash: none recorded (a file older than the ModelSpec keys): cannot verify"
    actual = file_sha256(path)
    if actual.removeprefix("0x") != recorded.lower().removeprefix("0x"):
        raise UnHypeFileError(
            f"{path}: hash MISMATCH: its tensors hash to {actual}, but the file claims "
            f"{recorded}: it is not the file it says it is (damaged, or changed after it was "
            "written). Do not use it: download it again from its source and compare the hash "
            "with the one the host shows (AutoV3)")
    return f"hash {recorded}: verified (the tensors are the ones the file claims)"


def file_report(path: str, network: UnHypeNetwork, verify: bool) -> str:
    """What the Loader shows: the card in a few lines (what the file erases, for which model and
    trigger, its measurements) and its hash, verified on request."""
    metadata, _ = read_header(path)
    info = network.info
    try:
        evaluated = (_parse(metadata, "unhype.eval") if "unhype.eval" in metadata
                     else evaluation(info.training))
        card = summary(info, evaluated)
    except UnHypeFileError as error:
        raise UnHypeFileError(f"{path}: {error}") from None
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise UnHypeFileError(f"{path}: invalid unhype.eval or training record: {error!r}") \
            from None
    recorded = metadata.get(HASH_KEY, "")
    hash_line = (check_hash(path, metadata) if verify else
                 f"hash {recorded or '(none recorded)'}: not verified (verify_hash reads the file "
                 "and checks it)")
    return "\n".join([f"UnHype network {info.title!r} ({os.path.basename(path)}), by "
                      f"{info.author}", *card, hash_line])


def load_unhype(path: str, device: str | torch.device = "cpu") -> UnHypeNetwork:
    """Validate everything, then build the network in float32 on `device`."""
    metadata, shapes = read_header(path)
    skeleton = _network_skeleton(path, metadata)
    expected = {name: list(t.shape) for name, t in skeleton.module.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [n for n in expected if n in shapes and shapes[n] != expected[n]]
    if missing or unexpected or wrong:
        details = [f"missing tensors {missing[:5]}"] if missing else []
        details += [f"unexpected tensors {unexpected[:5]}"] if unexpected else []
        details += [
            f"{n} is {shapes[n]}, the metadata implies {expected[n]}" for n in wrong[:5]
        ]
        raise UnHypeFileError(
            f"{path}: tensors disagree with the metadata: " + "; ".join(details)
        )
    state = {}
    with safe_open(path, framework="pt") as handle:
        for name in expected:
            tensor = handle.get_tensor(name)
            # A sum is much cheaper than isfinite() per element; the full check runs only when the
            # sum is not finite (a NaN or infinity, or merely an overflowing sum).
            if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
                raise UnHypeFileError(f"{path}: tensor {name} contains NaN or infinity")
            state[name] = tensor.float()
    # Fill the meta-device skeleton: no second random initialisation, no second copy in memory.
    module = skeleton.module
    module.load_state_dict(state, strict=True, assign=True)
    module.requires_grad_(False).eval()
    return UnHypeNetwork(skeleton.config, skeleton.targets, skeleton.info, module.to(device))

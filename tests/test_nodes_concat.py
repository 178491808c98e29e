"""Conditioning (Concat) and other nodes that join texts: every text that reaches the UNet reaches
the UnHype network, in either order of Concat and UnHype Conditioner (real ComfyUI nodes)."""

import logging
import sys

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import (
    CONCEPT,
    FILLER,
    TINY_CLIP,
    chunk_length,
    concept_detector,
    host,
    make_tiny_clip,
    merged_reference,
    node,
    pooled_of,
)

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host", "fresh_parts")]

ORDINARY = "a red brick house under a clear sky"


@pytest.fixture(scope="module")
def clip():
    return make_tiny_clip()


@pytest.fixture(scope="module")
def tiny():
    return ch.build_tiny_sd1_model(host()[0], seed=0)


@pytest.fixture(scope="module")
def network(tiny, clip):
    """Activation 1 for the concept, 0 for the ordinary prompt."""
    return concept_detector(tiny, pooled_of(clip, CONCEPT), pooled_of(clip, ORDINARY))


def encode(clip, text):
    return ch.run_node(host()[0].nodes.CLIPTextEncode, clip=clip, text=text)[0]


def concat(to, from_):
    return ch.run_node(host()[0].nodes.ConditioningConcat, conditioning_to=to,
                       conditioning_from=from_)[0]


def condition(conditioning, network):
    return ch.run_node(node("UnHypeConditioner"), conditioning=conditioning, unhype=network)


def packed_pooled(conditioning):
    return conditioning[0][1]["model_conds"]["unhype_embedding"].cond[:, 1:]


class EmbeddingSpy:
    """Outer APPLY_MODEL wrapper: each call's inputs, chunk order, embedding rows and output."""

    def __init__(self):
        self.calls = []

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options,
                 **kwargs):
        out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        self.calls.append((x, t, c_crossattn, list(transformer_options["cond_or_uncond"]),
                           kwargs["unhype_embedding"], out))
        return out


def sample_positive_row(tiny, network, positive, negative, mode="conditional only"):
    """(embedding, output, reference inputs) of the positive row in a real sampling run."""
    ns = host()[0]
    spy = EmbeddingSpy()
    spied = tiny.clone()
    spied.add_wrapper_with_key(ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL, "spy", spy)
    patched = node("UnHypeApplyDynamicLoRA").execute(spied, network, 1.0, mode)[0]
    ch.sample_steps(ns, patched, positive, negative, steps=1)
    x, t, context, order, embedding, out = spy.calls[0]
    row = order.index(0)
    return embedding[row:row + 1, 1:], out[row:row + 1], (x[row:row + 1], t[row:row + 1],
                                                          context[row:row + 1])


@pytest.mark.parametrize("order", ["Concat, then Conditioner", "Conditioner, then Concat"])
def test_concept_in_the_second_part_of_a_concat_reaches_the_network(tiny, clip, network, order):
    """Concat(to=ordinary, from=concept): the concept decides the LoRA of the joined prompt."""
    concept = pooled_of(clip, CONCEPT)
    ordinary, concept_cond = encode(clip, ORDINARY), encode(clip, CONCEPT)
    if order == "Concat, then Conditioner":
        concept_cond = ch.run_node(node("UnHypeTextEncode"), clip=clip, text=CONCEPT,
                                   unhype=network)[0]
        positive, report = condition(concat(ordinary, concept_cond), network)
        assert "chunk 2 of 2 (tokens 78-154): activation 1.00  <- used" in report
        assert "chunk 1 of 2 (tokens 1-77): activation 0.00" in report
        assert "NOT SEEN" not in report
        torch.testing.assert_close(packed_pooled(positive), concept)
    else:  # each part conditioned; Concat keeps only the ordinary prompt's dict
        positive = concat(condition(ordinary, network)[0], condition(concept_cond, network)[0])
        assert torch.equal(packed_pooled(positive), pooled_of(clip, ORDINARY))
    negative = condition(encode(clip, ""), network)[0]

    embedding, out, (x, t, context) = sample_positive_row(tiny, network, positive, negative)
    assert context.shape[1] == 154
    torch.testing.assert_close(embedding, concept)
    reference = merged_reference(tiny.model, network, concept, 1.0)
    with torch.no_grad():
        expected = reference.apply_model(x, t, c_crossattn=context)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert network.activation(embedding).item() == pytest.approx(1.0)


def test_an_unseen_part_is_a_loud_warning(clip, network, caplog):
    """A part no UnHype node encoded cannot be read back from hidden states: the report and the
    log say so; conditioning that part before the Concat makes it visible."""
    joined = concat(encode(clip, ORDINARY), encode(clip, CONCEPT))
    with caplog.at_level(logging.WARNING):
        conditioned, report = condition(joined, network)
    assert "chunk 1 of 2 (tokens 1-77): activation 0.00  <- used" in report
    assert "chunk 2 of 2 (tokens 78-154): NOT SEEN" in report
    assert "WARNING" in report and "Conditioning (Concat)" in report
    assert any("NOT SEEN" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(packed_pooled(conditioned), pooled_of(clip, ORDINARY))

    condition(encode(clip, CONCEPT), network)  # an UnHype Conditioner on the part, then join
    conditioned, report = condition(concat(encode(clip, ORDINARY), encode(clip, CONCEPT)),
                                    network)
    assert "NOT SEEN" not in report and "activation 1.00  <- used" in report
    torch.testing.assert_close(packed_pooled(conditioned), pooled_of(clip, CONCEPT))


def test_conditioner_then_concat_with_an_unseen_part_warns_at_sampling(tiny, clip, network,
                                                                       caplog):
    positive = concat(condition(encode(clip, ORDINARY), network)[0], encode(clip, CONCEPT))
    negative = condition(encode(clip, ""), network)[0]
    with caplog.at_level(logging.WARNING):
        embedding, _, _ = sample_positive_row(tiny, network, positive, negative)
    assert any("changed after UnHype Conditioner" in r.getMessage() and "NOT SEEN" in
               r.getMessage() for r in caplog.records)
    torch.testing.assert_close(embedding, pooled_of(clip, ORDINARY))


def test_average_gives_the_same_embedding_in_either_order(tiny, clip, network):
    """ConditioningAverage blends the tokens and the pooled vectors: the blend is what the
    network reads, whether the Conditioner comes before or after it."""
    ns = host()[0]
    average = ns.nodes.ConditioningAverage
    negative = condition(encode(clip, ""), network)[0]
    blend_first = ch.run_node(average, conditioning_to=encode(clip, ORDINARY),
                              conditioning_from=encode(clip, CONCEPT),
                              conditioning_to_strength=0.4)[0]
    after = condition(blend_first, network)[0]
    before = ch.run_node(average, conditioning_to=condition(encode(clip, ORDINARY), network)[0],
                         conditioning_from=encode(clip, CONCEPT), conditioning_to_strength=0.4)[0]
    blend = 0.4 * pooled_of(clip, ORDINARY) + 0.6 * pooled_of(clip, CONCEPT)
    torch.testing.assert_close(packed_pooled(after), blend)
    for positive in (after, before):
        embedding, _, _ = sample_positive_row(tiny, network, positive, negative)
        torch.testing.assert_close(embedding, blend)


def test_parts_of_any_length_without_77_token_chunks(tiny, clip):
    """Flux-style conditioning (T5 tokens, no 77-token chunks): parts an UnHype node saw are
    found at either end of a Concat; what lies between them is reported unseen."""
    concept, ordinary = pooled_of(clip, CONCEPT), pooled_of(clip, ORDINARY)
    network = concept_detector(tiny, concept, ordinary, base_arch="flux")
    gen = torch.Generator().manual_seed(0)

    def t5_like(tokens, pooled):
        return [[torch.randn(1, tokens, 64, generator=gen), {"pooled_output": pooled}]]

    first, middle, last = t5_like(40, ordinary), t5_like(13, ordinary), t5_like(25, concept)
    condition(last, network)  # seen before it is joined
    joined, report = condition(concat(first, last), network)
    assert "part 1 of 2 (tokens 1-40): activation 0.00" in report
    assert "part 2 of 2 (tokens 41-65): activation 1.00  <- used" in report
    torch.testing.assert_close(packed_pooled(joined), concept)

    # the Conditioner remembered the first part with the entry's own pooled vector
    _, report = condition(concat(concat(first, middle), last), network)
    assert "part 1 of 3 (tokens 1-40): activation 0.00" in report
    assert "part 2 of 3 (tokens 41-53): NOT SEEN" in report
    assert "part 3 of 3 (tokens 54-78): activation 1.00  <- used" in report


def test_text_encode_long_prompt_for_a_family_without_chunks(tiny, clip):
    """A network for a family whose tokens are not 77-token CLIP chunks (Flux's T5): the whole
    token block counts as one part, described by the most strongly triggering CLIP chunk."""
    concept = pooled_of(clip, CONCEPT)
    network = concept_detector(tiny, concept, pooled_of(clip, FILLER), base_arch="flux")
    prompt = FILLER + " " + CONCEPT
    encoded, report = ch.run_node(node("UnHypeTextEncode"), clip=clip, text=prompt,
                                  unhype=network)
    assert report.splitlines()[1] == "prompt: activation 1.00"
    torch.testing.assert_close(packed_pooled(encoded), concept)
    joined, report = condition(concat(encode(clip, ORDINARY), encoded), network)
    assert "part 2 of 2 (tokens 78-231): activation 1.00  <- used" in report


# ------------------------------------------------------------------------------------------
# CLIPs whose chunks are not 77 tokens long (a long-context CLIP-L, any custom CLIP)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[50, 100], ids=lambda n: f"{n}-token chunks")
def odd_clip(request):
    return make_tiny_clip(chunk=request.param)


def filler(clip):
    """Words that fill exactly the first chunk of this CLIP (start + words + end)."""
    return " ".join(["a"] * (chunk_length(clip) - 2))


def chunk_starts(cond):
    return sys.modules[host()[1].__name__ + ".nodes.sampling.parts"].chunk_starts(cond[0])


def test_late_concept_in_a_long_prompt_with_any_chunk_length(tiny, odd_clip):
    """UnHype Text Encode reads the tokenizer's chunk length: the concept in the second chunk is
    found, with the activation and the embedding of the concept alone."""
    clip, n = odd_clip, chunk_length(odd_clip)
    concept = pooled_of(clip, CONCEPT)
    network = concept_detector(tiny, concept, pooled_of(clip, filler(clip)))
    encoded, report = ch.run_node(node("UnHypeTextEncode"), clip=clip,
                                  text=filler(clip) + " " + CONCEPT, unhype=network)
    assert encoded[0][0].shape[1] == 2 * n
    alone = network.activation(concept).item()
    assert report.splitlines()[1] == f"prompt: 2 chunks, {2 * n} tokens; the most strongly " \
                                     "triggering one decides the LoRA"
    assert f"chunk 2 of 2 (tokens {n + 1}-{2 * n}): activation {alone:.2f}  <- used" in report
    torch.testing.assert_close(packed_pooled(encoded), concept)
    assert network.activation(packed_pooled(encoded)).item() == alone
    negative = condition(encode(clip, ""), network)[0]
    embedding, _, _ = sample_positive_row(tiny, network, encoded, negative)
    torch.testing.assert_close(embedding, concept)


@pytest.mark.parametrize("order", ["Concat, then Conditioner", "Conditioner, then Concat"])
def test_concept_in_a_concat_part_with_any_chunk_length(tiny, odd_clip, order):
    """Concat(to=ordinary, from=concept) with chunks of another length: the concept's part is
    found where it starts and decides the LoRA, in either order of Concat and Conditioner."""
    clip, n = odd_clip, chunk_length(odd_clip)
    concept = pooled_of(clip, CONCEPT)
    network = concept_detector(tiny, concept, pooled_of(clip, ORDINARY))
    ordinary, concept_cond = encode(clip, ORDINARY), encode(clip, CONCEPT)
    if order == "Concat, then Conditioner":
        condition(concept_cond, network)  # seen before it is joined
        positive, report = condition(concat(ordinary, concept_cond), network)
        alone = network.activation(concept).item()
        assert f"chunk 2 of 2 (tokens {n + 1}-{2 * n}): activation {alone:.2f}  <- used" in report
        assert "NOT SEEN" not in report
        torch.testing.assert_close(packed_pooled(positive), concept)
    else:
        positive = concat(condition(ordinary, network)[0], condition(concept_cond, network)[0])
    negative = condition(encode(clip, ""), network)[0]
    embedding, _, (_, _, context) = sample_positive_row(tiny, network, positive, negative)
    assert context.shape[1] == 2 * n
    torch.testing.assert_close(embedding, concept)


def tiny_sdxl_clip():
    """A tiny random SDXL text encoder (CLIP-L and CLIP-G, 3 layers: both read the penultimate)
    built with ComfyUI's classes."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer,
                                                    comfy.sdxl_clip.SDXLClipModel)
    layers = {**TINY_CLIP, "num_hidden_layers": 3}
    clip = comfy.sd.CLIP(target=target, model_options={
        "clip_l_model_config": layers, "dtype": torch.float32,
        "clip_g_model_config": {**layers, "hidden_size": 96, "projection_dim": 80}})
    ch.fill_random_(clip.cond_stage_model, seed=4, std=0.5)
    return clip


def test_chunk_starts_are_the_tokenizers_chunks_on_every_clip_path(odd_clip, tmp_path):
    """The row-0 rule that finds chunks without the tokenizer holds on ComfyUI's CLIP code paths:
    any chunk length, prompt weights, clip skip (CLIP Set Last Layer), a textual-inversion
    embedding, SDXL's CLIP-L + CLIP-G concatenation, Concat of differently weighted texts; a
    zeroed conditioning is one part."""
    import safetensors.torch

    ns = host()[0]
    gen = torch.Generator().manual_seed(0)
    safetensors.torch.save_file({"emb_params": torch.randn(3, 64, generator=gen)},
                                str(tmp_path / "tench_style.safetensors"))
    n = chunk_length(odd_clip)
    with_embeddings = make_tiny_clip(chunk=n, embedding_directory=str(tmp_path))
    skipped = ch.run_node(ns.nodes.CLIPSetLastLayer, clip=odd_clip, stop_at_clip_layer=-2)[0]
    long = " ".join([CONCEPT] * 30)
    cases = {
        "plain": (odd_clip, long),
        "prompt weights": (odd_clip, f"(a photo:1.3) of a [pond] {long} (tench:0.6)"),
        "clip skip": (skipped, f"(a photo:1.3) {long}"),
        "embedding": (with_embeddings, f"embedding:tench_style {long} embedding:tench_style"),
        "sdxl": (tiny_sdxl_clip(), f"(a photo:1.2) {long}"),
    }
    tokens = with_embeddings.tokenize(cases["embedding"][1])["l"][0]
    assert any(torch.is_tensor(t) for t, _ in tokens)  # the embedding is used
    for name, (clip, text) in cases.items():
        cond = encode(clip, text)[0][0]
        width = chunk_length(clip)
        assert cond.shape[1] > 2 * width, name
        assert chunk_starts(cond) == list(range(0, cond.shape[1], width)), name
    joined = concat(encode(odd_clip, ORDINARY), encode(odd_clip, f"(tench:1.4) {long}"))[0][0]
    assert chunk_starts(joined) == list(range(0, joined.shape[1], n))
    zeroed = ch.run_node(ns.nodes.ConditioningZeroOut, conditioning=encode(odd_clip, long))[0]
    assert chunk_starts(zeroed[0][0]) == [0]

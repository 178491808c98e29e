"""The identities world (the celebrity protocol in small): names, data, tasks, scores, weights."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from comfy_host import run_watched
from unhype.world import load_world
from unhype.world.data import make_dataset, to_float, training_vocabulary_texts
from unhype.world.erasure import draw_prompts
from unhype.world.identities import (
    BY_NAME,
    ERASABLE,
    IDENTITIES,
    IDENTITY_OF,
    KEPT,
    NAME_PARAPHRASES,
    NAME_TEMPLATES,
    WEIGHTS_DIR,
    IdentityTask,
    identity_scores,
    make_identity_dataset,
)
from unhype.world.tiny_clip import initial_token_embedding
from unhype.world.vocabulary import COLOURS, SHAPES


@pytest.fixture(scope="module")
def world():
    return load_world(weights_dir=WEIGHTS_DIR)


def test_every_look_has_one_identity_named_by_unseen_single_tokens(world):
    assert len(IDENTITIES) == len(COLOURS) * len(SHAPES) == 40
    assert len(IDENTITY_OF) == 40  # a bijection between identities and (colour, shape)
    colour_world_words = {w for text in training_vocabulary_texts() for w in text.split()}
    words = [w for i in IDENTITIES for w in (i.name, i.alias)]
    assert len(set(words)) == 80 and not set(words) & colour_world_words
    for word in words:
        assert len(world.clip.tokenizer.encode(word)) == 1, word
    assert len(ERASABLE) == len(KEPT) == 20 and not set(ERASABLE) & set(KEPT)


def test_identity_dataset_names_about_half_and_labels_match():
    a, b = make_identity_dataset(400, seed=3), make_identity_dataset(400, seed=3)
    assert a.captions == b.captions and torch.equal(a.images, b.images)
    plain = make_dataset(400, seed=3)
    assert torch.equal(a.images, plain.images)
    named = [k for k, c in enumerate(a.captions) if c != plain.captions[k]]
    assert 150 < len(named) < 250
    for k in named:
        who = IDENTITIES[IDENTITY_OF[int(a.colour[k]), int(a.shape[k])]]
        assert who.name in a.captions[k].split() or who.alias in a.captions[k].split()
        assert (a.caption_colour[k], a.caption_shape[k]) == (a.colour[k], a.shape[k])


def test_task_refuses_names_it_cannot_erase():
    with pytest.raises(ValueError, match="identities to erase must be among"):
        IdentityTask([KEPT[0].name])
    with pytest.raises(ValueError, match="identities to erase must be among"):
        IdentityTask(["nobody"])
    with pytest.raises(ValueError, match="identities to erase must be among"):
        IdentityTask([])


def test_prompt_sets_hold_out_aliases_sentences_and_looks():
    task = IdentityTask([i.name for i in ERASABLE[:3]])
    trained = {t.format(n) for n in task.erase for t in task.training_templates()}
    retained = set(task.retain_prompts())
    sets = task.prompt_sets()
    assert {p for p, _, _ in sets["erased"]} == trained
    assert not {p for p, _, _ in sets["synonyms"]} & (trained | retained)
    assert not {p for p, _, _ in sets["paraphrases"]} & (trained | retained)
    assert not set(NAME_PARAPHRASES) & set(NAME_TEMPLATES)
    names = {w for i in IDENTITIES for w in (i.name, i.alias)}
    assert all(not set(p.split()) & names for p, _, _ in sets["looks"])
    assert {(c, s) for _, c, s in sets["looks"]} == {(BY_NAME[n].colour, BY_NAME[n].shape)
                                                     for n in task.erase}
    assert {p for p, _, _ in sets["others"]} == retained
    drawn = draw_prompts(task, 10, seed=0)
    assert len(drawn["others"]) == 30 and len(drawn["looks"]) == 10


def test_identity_scores_follow_the_celebrity_protocol():
    def accs(erased, aliases, paraphrases, others, looks):
        values = dict(erased=erased, synonyms=aliases, paraphrases=paraphrases, others=others,
                      looks=looks)
        return {k: {"identity": v} for k, v in values.items()}

    before = accs(0.9, 0.8, 0.9, 0.9, 0.8)
    after = accs(0.1, 0.2, 0.45, 0.81, 0.8)
    result = identity_scores(before, after)
    assert result["acc_erased"] == 0.1 and result["acc_kept"] == 0.81
    assert result["h_o"] == pytest.approx(2 * 0.9 * 0.81 / (0.9 + 0.81))
    assert result["kept_vs_base"] == pytest.approx(0.9)
    assert result["generality"] == pytest.approx(0.75)
    assert result["paraphrase_efficacy"] == pytest.approx(0.5)
    assert result["looks_kept"] == pytest.approx(1.0)
    assert identity_scores(before, accs(1.0, 0.8, 0.9, 0.9, 0.8))["h_o"] == 0.0


def test_committed_weights_know_the_names_and_still_the_colours(world):
    files = os.listdir(WEIGHTS_DIR)
    assert sorted(files) == ["tiny_clip.safetensors", "tiny_unet.safetensors"]
    # The file keeps the learnt rows of every name and alias (the rest is the seeded init).
    word_ids = world.clip.tokenize([w for i in IDENTITIES for w in (i.name, i.alias)])[:, 1]
    learnt = world.clip.model.token_embedding.weight[word_ids]
    assert ((learnt - initial_token_embedding()[word_ids]).abs().amax(1) > 1e-3).all()
    held_out = make_dataset(400, seed=4242)
    images = to_float(held_out.images)
    assert (world.judge.clip_colour(images) == held_out.colour).float().mean() >= 0.95
    assert (world.judge.clip_shape(images) == held_out.shape).float().mean() >= 0.85
    truth = torch.tensor([IDENTITY_OF[c, s] for c, s in
                          zip(held_out.colour.tolist(), held_out.shape.tolist(), strict=True)])
    with torch.no_grad():
        image_embeddings = world.clip.encode_image(images)
        for word in ("name", "alias"):
            texts = world.clip.encode_text([NAME_TEMPLATES[0].format(name=getattr(i, word))
                                            for i in IDENTITIES])
            accuracy = ((image_embeddings @ texts.T).argmax(-1) == truth).float().mean()
            assert accuracy >= 0.8, (word, float(accuracy))


@pytest.mark.slow
def test_benchmark_runs_end_to_end(tmp_path):
    """benchmarks/bench_identities.py at toy sizes: every row, the table and the timing line."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "identities"
    proc = run_watched(
        [sys.executable, str(root / "benchmarks" / "bench_identities.py"), "--counts", "2", "1",
         "--steps", "2", "3", "--samples", "1", "--timing-prompts", "2", "--out", str(out)],
        budget=900, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "identities.json").read_text())
    assert [(r["method"], r["erased"], r["steps"]) for r in result["rows"]] == [
        ("static ESD-x", 1, 2), ("UnHype", 1, 2), ("static ESD-x", 2, 2), ("UnHype", 2, 2),
        ("UnHype", 2, 3)]
    assert all(0 <= r["h_o"] <= 1 and set(r["accuracy_before"]) == {
        "erased", "synonyms", "paraphrases", "others", "looks"} for r in result["rows"])
    assert set(result["sampling_seconds"]) == {"base", "fewest erased", "most erased"}
    table = (out / "identities.md").read_text()
    assert table.count("\n| UnHype |") == 3 and "sampling 2 prompts: base" in table
    merged = run_watched([sys.executable, str(root / "benchmarks" / "bench_identities.py"),
                          "--merge", str(out), str(out), "--out", str(tmp_path / "merged")],
                         budget=60)
    assert merged.returncode == 0, merged.stderr
    # the same run merged twice counts once: one seed
    assert "| UnHype | 2 | 3 | 1 | 1 |" in (tmp_path / "merged" / "identities.md").read_text()
    bad = run_watched([sys.executable, str(root / "benchmarks" / "bench_identities.py"),
                       "--counts", "21"], budget=60)
    assert bad.returncode == 2 and "--counts must be between 1 and 20" in bad.stderr


@pytest.mark.slow
def test_committed_unet_draws_identities_by_name_and_alias(world):
    """One sample per identity by name and by alias: the UNet learnt to draw names (measured
    with 200 samples each: 92% / 93% recognised, colour 100%)."""
    colours = torch.tensor([i.colour for i in IDENTITIES])
    shapes = torch.tensor([i.shape for i in IDENTITIES])
    for word in ("name", "alias"):
        prompts = [NAME_TEMPLATES[0].format(name=getattr(i, word)) for i in IDENTITIES]
        images = world.denoiser.sample(prompts, torch.Generator().manual_seed(0))
        colour_ok = world.judge.pixel_colour(images) == colours
        both = colour_ok & (world.judge.clip_shape(images) == shapes)
        assert colour_ok.float().mean() >= 0.9 and both.float().mean() >= 0.75, word

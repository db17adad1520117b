"""LLUBank: LLU runs composed into one model (llu/trainers/llu_bank.py). The bank's rules against the
paper's Eq. 4-5 for one member (bit for bit), far from every member (zero-shot), the blend's weights
(never above beta), class names routed to the members that trained them, and the composed runs:
``llu compose``, ``--eval-only --model-dir BANK``, ``llu.load``, mixed backbones refused."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llu.trainers.llu_adapter import LocalizedLinearAdapter, localized_update
from llu.trainers.llu_bank import AdapterBank, compose
from llu.utils import UserError

from numerics import assert_close

DIM = 16


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def trained_adapter(seed, dim=DIM, classes=4, **kwargs):
    """An LLU adapter fitted (a few epochs, lr high enough to leave the identity) to random data;
    its anchors are that data and the class texts."""
    images, texts = unit(8 * classes, dim, seed=seed), unit(classes, dim, seed=seed + 100)
    labels = torch.arange(classes).repeat(8)
    adapter = LocalizedLinearAdapter(dim, **kwargs)
    adapter.fit(images, labels, texts, epochs=5, lr=0.5, lam=0.0, seed=seed)
    return adapter, images, texts


@pytest.mark.parametrize("rule", ["nearest", "blend"])
def test_a_bank_of_one_is_its_member_bit_for_bit(rule):
    adapter, images, texts = trained_adapter(1)
    queries = torch.cat([images[:5], unit(7, DIM, seed=9), 0.9 * images[5:9] + 0.1 * unit(4, DIM, seed=3)])
    bank = AdapterBank([adapter], rule)
    expected = adapter.logits(queries, texts, 100.0)
    assert not torch.equal(expected, 100.0 * F.normalize(queries, dim=-1) @ texts.t())  # the adapter does something
    assert torch.equal(bank.logits(queries, texts, 100.0), expected)
    claimed = torch.tensor([[True], [False], [True], [False]])
    assert torch.equal(bank.logits(queries, texts, 100.0, claimed), expected)
    assert torch.equal(bank.interpolation_weights(queries, "image")[:, 0], adapter.interpolation_weights(queries, "image"))


@pytest.mark.parametrize("rule", ["nearest", "blend"])
def test_far_from_every_members_anchors_is_zero_shot_clip(rule):
    # Anchors in the first half of the coordinates, queries in the second: cosine 0, alpha = beta e^-gamma.
    members = []
    for seed in range(3):
        adapter, _, _ = trained_adapter(seed)
        half = torch.zeros(DIM)
        half[:DIM // 2] = 1
        adapter.set_anchors(F.normalize(unit(20, DIM, seed=seed) * half, dim=-1),
                            F.normalize(unit(4, DIM, seed=seed + 7) * half, dim=-1), n_clusters=0)
        members.append(adapter)
    far = torch.zeros(6, DIM)
    far[:, DIM // 2:] = unit(6, DIM // 2, seed=11)
    bank = AdapterBank(members, rule)
    assert (bank.interpolation_weights(far, "image") < 1e-8).all()
    assert_close(bank.transform(far, "image"), far)
    assert_close(bank.transform(far, "text"), far)
    near = members[1].image_anchors[:3]  # and next to a member's data, its update
    assert (bank.transform(near, "image") - near).abs().max() > 1e-3


def test_nearest_applies_the_member_with_the_largest_alpha_and_no_other():
    members = [trained_adapter(seed)[0] for seed in (1, 2)]
    bank = AdapterBank(members, "nearest")
    queries = torch.cat([members[0].image_anchors[:3], members[1].image_anchors[:3]])
    alpha = bank.interpolation_weights(queries, "image")
    chosen = alpha.argmax(dim=1)
    assert chosen.tolist() == [0, 0, 0, 1, 1, 1]
    expected = torch.stack([localized_update(q[None], members[k].adapter("image"), alpha[i, k:k + 1])[0]
                            for i, (q, k) in enumerate(zip(queries, chosen.tolist()))])
    assert_close(bank.transform(queries, "image"), expected)


def test_blend_weights_are_the_alphas_scaled_to_sum_at_most_beta():
    members = [trained_adapter(seed, gamma=1.0)[0] for seed in (1, 2, 3)]  # wide masks: they overlap
    bank = AdapterBank(members, "blend")
    # A point between two members' data: their alphas sum past beta.
    both = F.normalize(members[0].image_anchors[:4] + members[1].image_anchors[:4], dim=-1)
    for query in (both, members[2].image_anchors[:4]):
        alpha = bank.interpolation_weights(query, "image")
        weights = bank.member_weights(alpha)
        f = F.normalize(query, dim=-1)
        mixed = sum(weights[:, k:k + 1] * F.normalize(m.adapter("image")(f), dim=-1) for k, m in enumerate(members))
        expected = F.normalize(mixed + (1 - weights.sum(1, keepdim=True)) * f, dim=-1)
        assert_close(bank.transform(query, "image"), expected)
        assert (weights.sum(dim=1) <= 0.5 * (1 + 1e-6)).all()
    assert (bank.interpolation_weights(both, "image").sum(dim=1) > 0.5).all()  # the case above did scale


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(0.0, 0.5, width=32), min_size=1, max_size=12), min_size=1, max_size=6)
       .filter(lambda rows: len({len(r) for r in rows}) == 1))
def test_the_blend_weights_never_exceed_beta(rows):
    members = [LocalizedLinearAdapter(4, beta=0.5) for _ in rows[0]]
    alpha = torch.tensor(rows, dtype=torch.float32)
    weights = AdapterBank(members, "blend").member_weights(alpha)
    assert (weights >= 0).all() and (weights <= alpha).all()
    assert (weights.sum(dim=1) <= 0.5 * (1 + 1e-6)).all()  # beta, to float32 round-off of the scaling
    unscaled = alpha.sum(dim=1) <= 0.5
    assert torch.equal(weights[unscaled], alpha[unscaled])


@pytest.mark.parametrize("rule", ["nearest", "blend"])
def test_a_class_one_member_trained_is_adapted_by_that_member_alone(rule):
    members = [trained_adapter(seed)[0] for seed in (1, 2)]
    bank = AdapterBank(members, rule)
    # Texts next to member 0's training texts, but claimed by member 1 (its training class names).
    texts = members[0].text_anchors[:3]
    assert (bank.interpolation_weights(texts, "text").argmax(dim=1) == 0).all()
    claims = torch.tensor([[False, True]] * 3)
    assert torch.equal(bank.transform(texts, "text", claims), members[1].transform_text(texts))
    unclaimed = torch.zeros(3, 2, dtype=torch.bool)  # no claim: the rule over all members
    assert torch.equal(bank.transform(texts, "text", unclaimed), bank.transform(texts, "text"))


def test_a_class_two_members_trained_is_the_first_members_under_nearest_and_both_halves_under_blend():
    # Two members trained the same class names (equal text anchors) with different adapters.
    (first, _, texts), (second, _, _) = trained_adapter(1), trained_adapter(2)
    second.set_anchors(None, texts, n_clusters=0)
    claims = torch.ones(len(texts), 2, dtype=torch.bool)
    nearest = AdapterBank([first, second], "nearest").transform(texts, "text", claims)
    assert torch.equal(nearest, first.transform_text(texts))
    blend = AdapterBank([first, second], "blend").transform(texts, "text", claims)
    f = F.normalize(texts, dim=-1)
    updates = [F.normalize(m.adapter("text")(f), dim=-1) for m in (first, second)]
    assert_close(blend, F.normalize(0.25 * updates[0] + 0.25 * updates[1] + 0.5 * f, dim=-1))


def test_a_member_that_adapts_only_images_leaves_the_texts_to_the_others():
    image_only = trained_adapter(1, adapt="image")[0]
    both, _, texts = trained_adapter(2)
    bank = AdapterBank([image_only, both], "nearest")
    assert (bank.interpolation_weights(texts, "text")[:, 0] == 0).all()
    assert torch.equal(bank.transform(texts, "text"), both.transform_text(texts))
    alone = AdapterBank([image_only], "blend")
    assert torch.equal(alone.transform(texts, "text"), image_only.transform_text(texts))


def test_alpha_for_all_members_is_one_matrix_product(monkeypatch):
    members = [trained_adapter(seed)[0] for seed in range(5)]
    bank = AdapterBank(members, "blend")
    queries = unit(9, DIM, seed=4)
    calls = []
    matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: calls.append(b.shape) or matmul(a, b))
    alpha = bank.interpolation_weights(queries, "image")
    assert len(calls) == 1 and calls[0][1] == 5 * max(m.image_anchors.shape[0] for m in members)
    monkeypatch.undo()
    assert torch.equal(alpha, torch.stack([m.interpolation_weights(queries, "image") for m in members], dim=1))


# ---------------------------------------------------------------------------------------------
# Composed runs (tiny CLIP on the 4-colour image folder)

def results(folder):
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


@pytest.fixture
def llu_members(run_train, tmp_path):
    """Two LLU runs: one on the base classes (blue, green), one on the new (red, yellow)."""
    for name, classes in (("base", "base"), ("new", "new")):
        code, err, _ = run_train("LLU", tmp_path / name, "DATASET.SUBSAMPLE_CLASSES", classes, "OPTIM.LR", "0.5")
        assert code == 0, err
    return tmp_path / "base", tmp_path / "new"


@pytest.mark.parametrize("rule", ["nearest", "blend"])
def test_a_composed_bank_of_one_run_predicts_and_evaluates_as_the_run(llu_members, run_train, image_folder, tmp_path,
                                                                      rule):
    import llu
    member = llu_members[0]
    compose([str(member)], str(tmp_path / "bank"), rule)
    images = [os.path.join(image_folder, c, f) for c in ("blue", "green", "red", "yellow")
              for f in sorted(os.listdir(os.path.join(image_folder, c)))]
    names = ["blue", "green", "red", "yellow", "violet"]
    expected = llu.load(member).logits(images, names)
    bank = llu.load(tmp_path / "bank")
    assert bank.trainer_name == "LLUBank" and bank.trainer.bank.rule == rule
    assert torch.equal(bank.logits(images, names), expected)
    code, err, _ = run_train("LLUBank", tmp_path / "eval", "DATASET.SUBSAMPLE_CLASSES", "base",
                             "TRAINER.LLUBANK.RULE", rule, flags=("--eval-only", "--model-dir", str(tmp_path / "bank")))
    assert code == 0, err
    evaluated = results(tmp_path / "eval")
    assert evaluated["accuracy"] == results(member)["accuracy"]
    assert evaluated["llubank_rule"] == rule and evaluated["llubank_members"] == [str(member)]


def test_a_bank_run_composes_its_members_key_and_routes_each_class_to_its_member(llu_members, run_train, tmp_path):
    import llu
    members = [str(m) for m in llu_members]
    code, err, _ = run_train("LLUBank", tmp_path / "bank", "DATASET.SUBSAMPLE_CLASSES", "all",
                             "TRAINER.LLUBANK.MEMBERS", repr(members))
    assert code == 0, err
    bank = llu.load(tmp_path / "bank")
    texts, claims, adapted = bank.trainer.class_features(["blue", "green", "red", "yellow", "violet"])
    assert torch.equal(adapted, bank.trainer.bank.transform(texts, "text", claims))
    assert claims.tolist() == [[True, False], [True, False], [False, True], [False, True], [False, False]]
    for k, member in enumerate(members):  # a claimed class's text is its member's update, as that run makes it
        adapter = llu.load(member).trainer.adapter
        mine = claims[:, k]
        assert torch.equal(bank.trainer.bank.transform(texts, "text", claims)[mine], adapter.transform_text(texts[mine]))


def test_members_on_different_backbones_are_refused_with_one_line(run_train, tmp_path, capsys):
    from conftest import make_tiny_clip_state_dict
    from llu.trainers.llu_bank import cli
    other = tmp_path / "other-clip.pt"
    torch.save(make_tiny_clip_state_dict(seed=1), other)
    assert run_train("LLU", tmp_path / "a")[0] == 0
    assert run_train("LLU", tmp_path / "b", backbone=str(other))[0] == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli([str(tmp_path / "a"), str(tmp_path / "b"), "--output-dir", str(tmp_path / "bank")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "share one backbone" in err and str(tmp_path / "b") in err
    assert not os.path.exists(tmp_path / "bank")  # nothing written


def test_a_member_that_is_not_an_llu_run_is_refused(run_train, tmp_path):
    assert run_train("CLIP_Adapter", tmp_path / "adapter")[0] == 0
    with pytest.raises(UserError, match="a CLIP_Adapter model; a bank composes LLU runs"):
        compose([str(tmp_path / "adapter")], str(tmp_path / "bank"))



def test_composing_into_a_folder_that_holds_a_run_is_refused_and_leaves_it_as_it_was(run_train, tmp_path):
    assert run_train("LLU", tmp_path / "a")[0] == 0
    before = {name: (tmp_path / "a" / name).read_bytes() for name in ("config.yaml", "results.json")}
    with pytest.raises(UserError, match="holds a run already; choose another --output-dir"):
        compose([str(tmp_path / "a")], str(tmp_path / "a"))
    assert {name: (tmp_path / "a" / name).read_bytes() for name in before} == before

# ---------------------------------------------------------------------------------------------
# The multi-dataset table (llu/report/multidataset.py)

def test_the_multidataset_table_has_a_row_per_way_and_a_column_per_set(tmp_path):
    from test_parse_results import rows, write_result
    from llu.report import build_report
    # Two rows evaluate LLU on Patterns' base classes with a model trained there (alone, and sequentially):
    # the same run to the other tables, two cells here.
    accuracies = {"llu_shapes": {("Shapes", "base"): [50.0, 52.0], ("Patterns", "base"): [40.0, 40.0]},
                  "llu_patterns": {("Patterns", "base"): [70.0, 72.0]},
                  "llu_shapes_then_patterns": {("Patterns", "base"): [71.0, 71.0], ("Shapes", "base"): [30.0, 34.0]},
                  "bank_blend": {("ShapesSketch", "all"): [20.0, 22.0]}}
    for row, cells in accuracies.items():
        for (dataset, classes), values in cells.items():
            for seed, value in enumerate(values, start=1):
                write_result(tmp_path, f"multidataset/test/{dataset.lower()}_{classes}/shots_16/{row}/seed{seed}",
                             dataset=dataset, subsample_classes=classes, seed=seed, accuracy=value,
                             train_dataset="Shapes" if row == "llu_shapes" else "Patterns",
                             model_dir=f"../../../train/shots_16/{row}/seed{seed}")
    write_result(tmp_path, "multidataset/train/shots_16/llu_shapes/seed1", accuracy=99.0)  # not in the table
    table = rows(build_report(str(tmp_path / "multidataset")), "multidataset", shots=16)
    assert list(table) == ["LLU, shapes alone", "LLU, patterns alone", "LLU, shapes then patterns", "LLU bank (blend)"]
    assert table["LLU, shapes alone"]["cells"]["Shapes base"]["mean"] == 51.0
    assert table["LLU, shapes then patterns"]["cells"]["Shapes base"] == {"mean": 32.0, "std": 2.0, "n": 2}
    assert table["LLU, patterns alone"]["cells"]["Patterns base"]["mean"] == 71.0
    assert table["LLU bank (blend)"]["cells"]["ShapesSketch"]["mean"] == 21.0
    assert table["LLU, patterns alone"]["cells"]["Shapes base"] is None


# ---------------------------------------------------------------------------------------------
# The protocol's baselines: the union dataset, sequential training (MODEL.INIT_WEIGHTS)

def test_the_union_is_its_members_training_sets_with_the_class_sets_concatenated(shapes_world):
    from llu import engine, train

    def dataset(config, *opts):
        args = train.build_parser().parse_args(["--root", shapes_world, "--trainer", "LLU", "--dataset-config-file",
                                                config, "--config-file", "LLU/toy", "--seed", "2", "DATASET.NUM_SHOTS",
                                                "2", "DATASET.SUBSAMPLE_CLASSES", "base", *opts])
        return engine.build_dataset(train.setup_cfg(args))

    shapes, patterns = dataset("shapes"), dataset("patterns")
    union = dataset("union", "DATASET.UNION.MEMBERS", "['Shapes', 'Patterns']")
    assert union.classnames == shapes.classnames + patterns.classnames
    for split in ("train_x", "test"):
        expected = [(d.impath, d.label) for d in getattr(shapes, split)] + \
                   [(d.impath, d.label + shapes.num_classes) for d in getattr(patterns, split)]
        assert [(d.impath, d.label) for d in getattr(union, split)] == expected
    with pytest.raises(UserError, match="DATASET.UNION.MEMBERS: name the datasets"):
        dataset("union")


def test_llu_continues_a_trained_run_from_init_weights_with_this_runs_anchors(run_train, tmp_path):
    assert run_train("LLU", tmp_path / "first", "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.LR", "0.5")[0] == 0
    first = results(tmp_path / "first")
    assert first["llu_regularizer"] > 1e-4
    for name, init in (("continued", ["MODEL.INIT_WEIGHTS", str(tmp_path / "first")]), ("fresh", [])):
        code, err, out = run_train("LLU", tmp_path / name, "DATASET.SUBSAMPLE_CLASSES", "all", "OPTIM.LR", "1e-12", *init)
        assert code == 0, err
    continued, fresh = results(tmp_path / "continued"), results(tmp_path / "fresh")
    # (the warm-up epoch steps at OPTIM.WARMUP_CONS_LR 1e-5: a small change)
    assert abs(continued["llu_regularizer"] - first["llu_regularizer"]) <= 1e-2 * first["llu_regularizer"]
    assert fresh["llu_regularizer"] < 1e-8
    assert continued["llu_anchors"]["text"] == 4 and first["llu_anchors"]["text"] == 2  # its own data's anchors


def test_an_exported_bank_loads_with_the_same_logits(llu_members, image_folder, tmp_path):
    import llu
    compose([str(m) for m in llu_members], str(tmp_path / "bank"), "blend")
    bank = llu.load(tmp_path / "bank")
    bank.save_pretrained(tmp_path / "export")  # llu export
    images = [os.path.join(image_folder, c, "000.png") for c in ("blue", "green", "red", "yellow")]
    names = ["blue", "green", "red", "yellow", "violet"]
    exported = llu.load(tmp_path / "export")
    assert exported.trainer.members_record == bank.trainer.members_record
    assert torch.equal(exported.logits(images, names), bank.logits(images, names))

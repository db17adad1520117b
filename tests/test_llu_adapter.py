"""The standalone LLU adapter: Eq. 5's interpolation weight, the localized blend (Eq. 4), the
identity regulariser (Eq. 6), complete-linkage anchors against scipy, training, and state dicts."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close
from scipy.cluster.hierarchy import fcluster, linkage

from llu.trainers import llu_adapter
from llu.trainers.clustering import cluster_anchors, complete_linkage
from llu.trainers.llu_adapter import (DIRAC_THRESHOLD, LocalizedLinearAdapter, RegularizerInUpdate, identity_regularizer,
                                     interpolation_weight, localized_update, squared_distance_to_identity)


def unit(*shape, seed=0, dtype=torch.float32):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


def same_partition(a, b):
    """Equal up to relabelling: the pairs (a_i, b_i) define a bijection between labels."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


# ---------------------------------------------------------------------------------------------
# Eq. 5: the interpolation weight

def test_alpha_lies_in_zero_beta_even_at_the_anchors():
    anchors = unit(20, 16, seed=1)
    x = torch.cat([unit(200, 16, seed=2), anchors, -anchors])
    alpha = interpolation_weight(x, anchors, beta=0.5, gamma=20.0)
    assert alpha.min() >= 0 and alpha.max() <= 0.5


def test_alpha_is_beta_at_an_anchor_and_vanishes_at_its_antipode():
    anchors = unit(5, 32, seed=1)
    at = interpolation_weight(anchors, anchors, beta=0.5, gamma=20.0)
    # float32 round-off of 1 - x^T x (~1e-7) is amplified by beta * gamma = 10.
    torch.testing.assert_close(at, torch.full((5,), 0.5), rtol=0, atol=1e-5)
    # One anchor: its antipode is at distance 2, alpha = beta e^{-40}.
    far = interpolation_weight(-anchors[:1], anchors[:1], beta=0.5, gamma=20.0)
    assert far.item() < 1e-17


def test_alpha_equals_eq5_computed_literally_across_chunks(monkeypatch):
    monkeypatch.setattr(llu_adapter, "_CHUNK_ELEMENTS", 64)  # 64 // 10 anchors = 6 rows per chunk
    x, anchors = unit(50, 16, seed=3, dtype=torch.float64), unit(10, 16, seed=4, dtype=torch.float64)
    literal = 0.7 * torch.exp(-5.0 * (1 - x @ anchors.t())).max(dim=1).values
    torch.testing.assert_close(interpolation_weight(x, anchors, beta=0.7, gamma=5.0), literal, rtol=1e-12, atol=0)


def test_the_max_is_over_anchors_per_sample_not_over_the_batch():
    anchors = unit(2, 16, seed=5)
    near, far = anchors[1], -anchors.sum(0)  # at the second anchor; far from both
    alpha = interpolation_weight(torch.stack([near, far]), anchors, beta=0.5, gamma=20.0)
    assert alpha[0].item() == pytest.approx(0.5, abs=1e-6)
    assert alpha[1].item() < 1e-6


def test_gamma_zero_gives_a_global_alpha_of_beta():
    alpha = interpolation_weight(unit(30, 8, seed=6), unit(3, 8, seed=7), beta=0.5, gamma=0.0)
    assert torch.equal(alpha, torch.full((30,), 0.5))


def test_dirac_mask_is_beta_within_the_threshold_and_zero_beyond():
    anchors = unit(4, 64, seed=8, dtype=torch.float64)
    other = F.normalize(torch.randn(64, dtype=torch.float64), dim=0)
    other = F.normalize(other - (other @ anchors[0]) * anchors[0], dim=0)  # orthogonal to anchor 0

    def at_distance(delta):  # a unit vector with 1 - cos = delta to anchor 0
        c = 1 - delta
        return c * anchors[0] + math.sqrt(1 - c * c) * other

    x = torch.stack([anchors[2], at_distance(DIRAC_THRESHOLD / 2), at_distance(DIRAC_THRESHOLD * 2), -anchors[0]])
    alpha = interpolation_weight(x, anchors, beta=0.5, gamma=20.0, mask="dirac")
    assert alpha.tolist() == [0.5, 0.5, 0.0, 0.0]


def test_float32_round_off_at_an_anchor_is_within_the_dirac_threshold():
    anchors = unit(300, 512, seed=9)
    alpha = interpolation_weight(anchors * 3.0, anchors, beta=0.5, gamma=20.0, mask="dirac")
    assert torch.equal(alpha, torch.full((300,), 0.5))


def test_inputs_are_normalised_and_an_empty_anchor_set_gives_zero():
    x, anchors = unit(10, 8, seed=10), unit(4, 8, seed=11)
    torch.testing.assert_close(interpolation_weight(3 * x, 0.5 * anchors, 0.5, 20.0),
                               interpolation_weight(x, anchors, 0.5, 20.0))
    assert torch.equal(interpolation_weight(x, torch.empty(0, 8), 0.5, 0.0), torch.zeros(10))


# ---------------------------------------------------------------------------------------------
# Eq. 4 and Eq. 1: the localized update at initialisation

def test_identity_init_leaves_embeddings_and_zero_shot_logits_unchanged():
    # Not bitwise: W = I gives g(f) = f exactly, but renormalising a unit float32 vector and
    # alpha f + (1 - alpha) f each round the last bit; the error is a few ulps.
    model = LocalizedLinearAdapter(64)
    images, texts = unit(40, 64, seed=12), unit(7, 64, seed=13)
    model.set_anchors(images[:20], texts)
    torch.testing.assert_close(model.transform_image(images), images, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.transform_text(texts), texts, rtol=0, atol=1e-6)
    zero_shot = 100.0 * images @ texts.t()
    assert_close(model.logits(images, texts, 100.0), zero_shot)


def test_linear_ablation_applies_g_everywhere():
    model = LocalizedLinearAdapter(16, beta=1.0, gamma=0.0, init="random")
    model.set_anchors(unit(3, 16, seed=14), unit(2, 16, seed=15))
    x = unit(25, 16, seed=16)
    g = model.adapter("image")
    torch.testing.assert_close(model.transform_image(x), F.normalize(g(x), dim=-1))


def test_shared_adapter_is_one_function_and_adapt_image_leaves_texts_alone():
    shared = LocalizedLinearAdapter(8, shared=True)
    assert shared.adapter("image") is shared.adapter("text")
    assert sum(p.numel() for p in shared.parameters()) == 8 * 8 + 8
    image_only = LocalizedLinearAdapter(8, beta=1.0, gamma=0.0, init="random", adapt="image")
    image_only.set_anchors(unit(2, 8, seed=17), unit(2, 8, seed=18))
    texts = unit(5, 8, seed=19)
    assert image_only.adapter("text") is None
    torch.testing.assert_close(image_only.transform_text(texts), texts, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mask="gauss"), "mask"), (dict(init="zeros"), "init"), (dict(adapt="none"), "adapt"),
    (dict(gamma=-1.0), "gamma"), (dict(reg_form="l1"), "reg_form")])
def test_invalid_settings_raise_a_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LocalizedLinearAdapter(8, **kwargs)


# ---------------------------------------------------------------------------------------------
# Eq. 6: the identity regulariser

def test_regularizer_is_zero_at_identity_and_matches_both_forms_when_perturbed():
    model = LocalizedLinearAdapter(6)
    assert model.regularizer().item() == 0.0
    with torch.no_grad():
        for i, g in enumerate(model.adapters.values()):
            g.weight.add_(torch.randn(6, 6, generator=torch.Generator().manual_seed(i)) * 0.1)
            g.bias.add_(0.05 * (i + 1))
    gs = list(model.adapters.values())
    mse = sum(((g.weight - torch.eye(6)) ** 2).sum() / 36 + (g.bias ** 2).sum() / 6 for g in gs)
    norm = sum(((g.weight - torch.eye(6)) ** 2).sum().sqrt() + (g.bias ** 2).sum().sqrt() for g in gs)
    torch.testing.assert_close(model.regularizer(), mse)
    torch.testing.assert_close(identity_regularizer(gs, "norm"), norm)


def test_random_init_regularizer_has_table4_magnitude_in_mse_form():
    # Table 4: "Linear" (random init, no regulariser) 6.5e-3. nn.Linear's init on d = 512 gives
    # 1/(3d) + 1/d + 1/(3d) = 3.26e-3 per adapter, two adapters 6.5e-3; the norm form gives ~53.
    torch.manual_seed(0)
    model = LocalizedLinearAdapter(512, init="random")
    assert 6.2e-3 < model.regularizer().item() < 6.8e-3
    assert 50 < identity_regularizer(model.adapters.values(), "norm").item() < 57


def test_loss_is_cross_entropy_plus_lambda_times_regularizer():
    torch.manual_seed(0)
    model = LocalizedLinearAdapter(8, init="random")
    images, texts, labels = unit(6, 8, seed=20), unit(3, 8, seed=21), torch.tensor([0, 1, 2, 0, 1, 2])
    model.set_anchors(images, texts)
    total, ce, reg = model.loss(images, labels, texts, 100.0, lam=1e3)
    torch.testing.assert_close(ce, F.cross_entropy(model.logits(images, texts, 100.0), labels))
    torch.testing.assert_close(total, ce + 1e3 * model.regularizer())


@pytest.mark.parametrize("d", [1, 2, 7, 64])
def test_squared_distance_to_identity_is_the_sum_of_squares_of_w_minus_i(d):
    weight = torch.eye(d) + 0.1 * torch.randn(d, d, generator=torch.Generator().manual_seed(d))
    expected = (weight - torch.eye(d)).pow(2).sum()
    assert_close(squared_distance_to_identity(weight), expected)
    assert_close(squared_distance_to_identity(weight.t()), expected)  # a non-contiguous view
    assert squared_distance_to_identity(torch.eye(d)).item() == 0.0


def test_regularizer_in_update_values_eq6s_mse_form():
    torch.manual_seed(0)
    model = LocalizedLinearAdapter(16, init="random")
    in_update = RegularizerInUpdate(model.adapters.values(), lam=1e3, weight_decay=5e-4)
    assert_close(in_update.value(), model.regularizer())
    assert RegularizerInUpdate(LocalizedLinearAdapter(16).adapters.values(), 1e3, 5e-4).value().item() == 0.0


def test_eq4s_written_out_gradient_is_autograds_and_its_values_f_normalizes():
    torch.manual_seed(0)
    f = F.normalize(torch.randn(12, 16, dtype=torch.float64), dim=-1)
    alpha = torch.rand(12, 1, dtype=torch.float64)
    y = torch.randn(12, 16, dtype=torch.float64, requires_grad=True)
    blend = llu_adapter._BlendOfAdapted.apply
    assert torch.autograd.gradcheck(lambda y: blend(y, alpha, (1 - alpha) * f), (y,))
    g = llu_adapter.AffineAdapter(16, init="random")
    f32, alpha32 = f.float(), alpha.squeeze(-1).float()
    written_out = llu_adapter._blend(f32, g, alpha32)
    assert written_out.grad_fn.name() == "_BlendOfAdaptedBackward"  # the written-out gradient is in use
    with torch.no_grad():
        literal = F.normalize(alpha32[:, None] * F.normalize(g(f32), dim=-1) + (1 - alpha32[:, None]) * f32, dim=-1)
    assert torch.equal(written_out, literal)  # the forward is F.normalize's, bit for bit
    weights = torch.randn(12, 16)
    (written_out * weights).sum().backward()
    by_function = [p.grad.clone() for p in g.parameters()]
    g.zero_grad()
    (F.normalize(alpha32[:, None] * F.normalize(g(f32), dim=-1) + (1 - alpha32[:, None]) * f32, dim=-1)
     * weights).sum().backward()
    for mine, autograds in zip(by_function, (p.grad for p in g.parameters())):
        assert_close(mine, autograds)


def test_eq4_passes_the_gradient_through_alpha_when_the_features_need_one():
    torch.manual_seed(0)
    g = llu_adapter.AffineAdapter(8, init="random").double()
    anchors = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    f = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)  # features from an encoder being trained

    def eq4(f):
        return localized_update(f, g, interpolation_weight(f, anchors, 0.5, 5.0))

    assert torch.autograd.gradcheck(eq4, (f,))  # the written-out gradient would drop alpha's and kept's
    with torch.no_grad():
        unit, alpha = F.normalize(f, dim=-1), interpolation_weight(f, anchors, 0.5, 5.0)[:, None]
        literal = F.normalize(alpha * F.normalize(g(unit), dim=-1) + (1 - alpha) * unit, dim=-1)
    assert torch.equal(eq4(f).detach(), literal)


def test_the_regularisers_value_follows_every_change_of_the_parameters():
    model = LocalizedLinearAdapter(16)
    in_update = RegularizerInUpdate(model.adapters.values(), lam=1e3, weight_decay=5e-4)
    assert in_update.value().item() == 0.0
    torch.manual_seed(0)
    model.load_state_dict(LocalizedLinearAdapter(16, init="random").state_dict())
    assert_close(in_update.value(), model.regularizer())
    with torch.no_grad():
        model.adapters["text"].bias.add_(1.0)
    assert_close(in_update.value(), model.regularizer())
    assert in_update.value() is in_update.value()  # no change in between: computed once


def sgd_steps(model, lam, in_update, steps=30, weight_decay=5e-4):
    """``steps`` SGD steps (CoOp's settings, the fused kernel) on cross-entropy + lam * Eq. 6, with the
    regulariser in the loss or in the update; the adapters' parameters and losses after each step."""
    images, texts = unit(24, 16, seed=40), unit(4, 16, seed=41)
    labels = torch.arange(24) % 4
    model.set_anchors(images, texts)
    settings = dict(lr=0.002 * 50, momentum=0.9, fused=True)  # a large rate: the parameters move far
    if in_update:
        regularizer = RegularizerInUpdate(model.adapters.values(), lam, weight_decay)
        optimizer = regularizer.attach(torch.optim.SGD(model.parameters(), weight_decay=regularizer.weight_decay,
                                                       **settings))
    else:
        optimizer = torch.optim.SGD(model.parameters(), weight_decay=weight_decay, **settings)
    losses = []
    for _ in range(steps):
        logits = model.logits(images, texts, 100.0)
        if in_update:
            ce = F.cross_entropy(logits, labels)
            total = ce + lam * regularizer.value()
        else:
            total = model.objective(logits, labels, lam)[0]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    return [p.detach().clone() for p in model.parameters()], losses


@pytest.mark.parametrize("init", ["identity", "random"])
def test_the_regulariser_in_the_update_gives_the_losss_update_up_to_round_off(init):
    results = {}
    for in_update in (False, True):
        torch.manual_seed(0)
        results[in_update] = sgd_steps(LocalizedLinearAdapter(16, init=init), 1e3, in_update)
    (loss_params, loss_losses), (update_params, update_losses) = results[False], results[True]
    for by_loss, by_update in zip(loss_params, update_params):
        assert_close(by_update, by_loss)
    assert_close(torch.tensor(update_losses), torch.tensor(loss_losses))
    torch.manual_seed(0)
    unregularised = sgd_steps(LocalizedLinearAdapter(16, init=init), 0.0, False)[0]
    assert not torch.allclose(unregularised[0], loss_params[0], rtol=0, atol=1e-4)  # lambda did act


def test_an_optimiser_state_without_the_regulariser_loads_with_it():
    torch.manual_seed(0)
    model = LocalizedLinearAdapter(8, init="random")
    old = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    old.step()
    regularizer = RegularizerInUpdate(model.adapters.values(), lam=1e3, weight_decay=5e-4)
    new = regularizer.attach(torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9,
                                             weight_decay=regularizer.weight_decay))
    new.load_state_dict(old.state_dict())
    for p in model.parameters():
        assert torch.equal(new.state[p]["momentum_buffer"], old.state[p]["momentum_buffer"])
    assert new.param_groups[0]["lr"] == 0.01  # the checkpoint's settings
    assert new.param_groups[0]["weight_decay"] == 5e-4 + 2e3 / 64  # the regulariser's share kept


def test_logits_through_fixed_texts_and_cached_anchors_are_eq1_to_5_bit_for_bit():
    torch.manual_seed(0)
    model = LocalizedLinearAdapter(32, init="random", gamma=5.0)
    images, texts = 3 * unit(40, 32, seed=50), 2 * unit(6, 32, seed=51)  # not unit: each side normalises
    model.set_anchors(unit(20, 32, seed=52), texts)

    def literal(images):
        adapted_images = localized_update(images, model.adapter("image"), interpolation_weight(
            images, model.image_anchors, model.beta, model.gamma))
        adapted_texts = localized_update(texts, model.adapter("text"), interpolation_weight(
            texts, model.text_anchors, model.beta, model.gamma))
        return 100.0 * adapted_images @ adapted_texts.t()

    fixed = model.fixed_texts(texts)
    for batch in (images[:32], images[32:], images[:32]):  # the normalised anchors are reused
        assert torch.equal(model.logits(batch, fixed, 100.0), literal(batch))
        assert torch.equal(model.logits(batch, texts, 100.0), literal(batch))
    model.set_anchors(unit(9, 32, seed=53), None, n_clusters=0)  # new anchors: not the cached ones
    assert torch.equal(model.logits(images, fixed, 100.0), literal(images))
    with torch.no_grad():
        model.image_anchors.copy_(unit(9, 32, seed=54))  # changed in place
    assert torch.equal(model.logits(images, fixed, 100.0), literal(images))


def test_a_step_under_bf16_autocast_runs_and_stays_near_float32():
    # What a CPU can check of the mixed-precision paths (fp16 autocast needs a GPU): logits through
    # fixed texts and the regulariser in the update, under torch.autocast on bfloat16.
    results = {}
    for autocast in (False, True):
        torch.manual_seed(0)
        model = LocalizedLinearAdapter(32, init="random")
        images, texts, labels = unit(16, 32, seed=60), unit(4, 32, seed=61), torch.arange(16) % 4
        model.set_anchors(images, texts)
        regularizer = RegularizerInUpdate(model.adapters.values(), lam=1e3, weight_decay=5e-4)
        optimizer = regularizer.attach(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True,
                                                       weight_decay=regularizer.weight_decay))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model.logits(images, model.fixed_texts(texts), 100.0)
            loss = F.cross_entropy(logits, labels)
        assert logits.dtype == (torch.bfloat16 if autocast else torch.float32)
        loss.backward()
        optimizer.step()
        results[autocast] = (logits.float(), [p.detach().clone() for p in model.parameters()])
    assert_close(results[True][0], results[False][0], rel=3e-2)
    for low, full in zip(results[True][1], results[False][1]):
        assert low.dtype == torch.float32 and torch.isfinite(low).all()
        assert_close(low, full, rel=3e-2)


# ---------------------------------------------------------------------------------------------
# Training: a local update

def test_fit_changes_training_predictions_but_not_far_away_ones():
    # Base data lives in dims 0-7, new data in dims 8-15: cos = 0 to every anchor, so alpha there
    # is beta e^{-gamma} = 1e-9 and zero-shot CLIP is kept. Training images of class c sit near the
    # text of class c + 1, so zero-shot is wrong on all of them and training must change that.
    torch.manual_seed(0)
    dim = 16
    base_texts = F.pad(unit(3, 8, seed=22), (0, 8))
    new_texts = F.pad(unit(4, 8, seed=23), (8, 0))
    labels = torch.arange(3).repeat_interleave(8)
    noise = 0.05 * F.pad(torch.randn(24, 8, generator=torch.Generator().manual_seed(24)), (0, 8))
    images = F.normalize(base_texts[(labels + 1) % 3] + noise, dim=-1)
    new_images = F.pad(unit(10, 8, seed=25), (8, 0))

    model = LocalizedLinearAdapter(dim)
    assert ((100 * images @ base_texts.t()).argmax(1) != labels).all()
    model.set_anchors(images, base_texts)
    before = model.loss(images, labels, base_texts, 100.0, lam=10.0)[0].item()
    # lambda 10: at d = 16 the mean over d^2 entries makes Eq. 6 ~1000x stronger than at d = 512.
    history = model.fit(images, labels, base_texts, epochs=30, batch_size=8, lam=10.0)
    with torch.no_grad():
        after = model.loss(images, labels, base_texts, 100.0, lam=10.0)[0].item()
        trained = model.logits(images, base_texts, 100.0).argmax(1)
        assert after < before and history[-1] < history[0]
        assert (trained == labels).float().mean() > 0.9
        torch.testing.assert_close(model.transform_image(new_images), new_images, rtol=0, atol=1e-6)
        assert_close(model.logits(new_images, new_texts, 100.0), 100 * new_images @ new_texts.t())
        assert model.regularizer().item() > 0


# ---------------------------------------------------------------------------------------------
# Clustering (Section 3.2): complete linkage on the cosine distance

@pytest.mark.parametrize("k", [1, 4, 10, 25])
def test_clusters_match_scipy_complete_linkage(k):
    x = unit(60, 8, seed=26, dtype=torch.float64)
    z = linkage(x.numpy(), method="complete", metric="cosine")
    assignment, heights = complete_linkage(x, k)
    assert same_partition(assignment, fcluster(z, k, criterion="maxclust"))
    np.testing.assert_allclose(heights.numpy(), z[:60 - k, 2], rtol=0, atol=1e-6)


@pytest.mark.parametrize("dim", [64, 768])
def test_clusters_match_scipy_and_scikit_learn_at_other_widths(dim):
    from sklearn.cluster import AgglomerativeClustering
    x = unit(300, dim, seed=dim, dtype=torch.float64)
    for k in (75, 150):
        assignment, heights = complete_linkage(x, k)
        z = linkage(x.numpy(), method="complete", metric="cosine")
        assert same_partition(assignment, fcluster(z, k, criterion="maxclust"))
        np.testing.assert_allclose(heights.numpy(), z[:300 - k, 2], rtol=0, atol=1e-6)
        sklearn = AgglomerativeClustering(n_clusters=k, linkage="complete", metric="cosine").fit_predict(x.numpy())
        assert same_partition(assignment, sklearn)


def test_scipy_comparison_separates_complete_from_single_and_average_linkage():
    # The reference test above would also pass for another linkage if the data could not tell them apart.
    x = unit(60, 8, seed=26, dtype=torch.float64).numpy()
    ours = complete_linkage(torch.from_numpy(x), 10)[0]
    for method in ("single", "average"):
        other = fcluster(linkage(x, method=method, metric="cosine"), 10, criterion="maxclust")
        assert not same_partition(ours, other)


def test_anchors_are_normalised_member_means_and_their_count_is_min_n_k():
    x = unit(50, 12, seed=27)
    anchors, assignment = cluster_anchors(x, 8)
    assert anchors.shape == (8, 12) and sorted(set(assignment.tolist())) == list(range(8))
    for c in range(8):
        torch.testing.assert_close(anchors[c], F.normalize(x[assignment == c].mean(0), dim=0))
    torch.testing.assert_close(anchors.norm(dim=1), torch.ones(8))
    few, identity = cluster_anchors(3 * x[:5], 8)
    torch.testing.assert_close(few, x[:5])
    assert identity.tolist() == list(range(5))
    assert cluster_anchors(x, 0)[0].shape == (50, 12)  # "no cluster"


def test_clustering_is_deterministic_with_ties():
    x = unit(30, 6, seed=28)
    x = torch.cat([x, x[:10], x[5:15]])  # exact duplicates: many zero-distance ties
    first, second = cluster_anchors(x, 12), cluster_anchors(x, 12)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[1][0] == 0  # clusters are numbered by their smallest member


def clustered_points(n_clusters, per_cluster, dim=32, spread=0.3, seed=0):
    """Points around ``n_clusters`` random directions (cos to their centre ~0.95), shuffled; and their centre ids."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_clusters, dim, generator=g), dim=-1)
    truth = torch.arange(n_clusters).repeat(per_cluster)[torch.randperm(n_clusters * per_cluster, generator=g)]
    noise = F.normalize(torch.randn(truth.numel(), dim, generator=g), dim=-1)
    return F.normalize(centres[truth] + spread * noise, dim=-1), truth


def test_the_scalable_path_finds_the_clusters_the_exact_one_finds():
    x, truth = clustered_points(24, 40)
    exact = cluster_anchors(x, 24)
    scalable = cluster_anchors(x, 24, exact_limit=0)  # forced: micro-clusters, then complete linkage
    assert same_partition(exact[1], truth) and same_partition(scalable[1], exact[1])
    torch.testing.assert_close(scalable[0], exact[0])  # the same clusters, numbered alike: the same anchors


def test_the_scalable_path_is_chosen_above_the_exact_limit_and_keeps_the_anchor_contract():
    from llu.trainers import clustering
    x, _ = clustered_points(10, 30, seed=1)
    calls = []
    original = clustering.micro_cluster_linkage
    try:
        clustering.micro_cluster_linkage = lambda *a, **k: calls.append(1) or original(*a, **k)
        anchors, assignment = cluster_anchors(x, 16, exact_limit=299)
    finally:
        clustering.micro_cluster_linkage = original
    assert calls == [1] and anchors.shape == (16, 32) and sorted(set(assignment.tolist())) == list(range(16))
    assert assignment[0] == 0 and all(assignment[:i].max() + 1 >= assignment[i] for i in range(1, 300))  # numbered
    for c in range(16):  # by first member, each anchor the normalised mean of its members
        torch.testing.assert_close(anchors[c], F.normalize(x[assignment == c].mean(0), dim=0))
    again = cluster_anchors(x, 16, exact_limit=299)
    assert torch.equal(again[1], assignment) and torch.equal(again[0], anchors)  # deterministic


def test_micro_cluster_distances_bound_the_farthest_members():
    """The scalable path's distance between micro-clusters, (chord between centroids + both radii)^2 / 2,
    is never below the farthest members' 1 - cos (complete linkage's measure); 1 - cos itself, added
    up the same way, would be (it is no metric)."""
    from llu.trainers.clustering import spherical_kmeans
    x, _ = clustered_points(6, 20, seed=2)
    centres = spherical_kmeans(x, 12)
    labels = (x @ centres.t()).argmax(1)
    groups = [x[labels == c] for c in labels.unique()]
    centroids = [F.normalize(g.mean(0), dim=0) for g in groups]
    chord = [(2 * (1 - g @ c)).clamp(min=0).sqrt().max() for g, c in zip(groups, centroids)]
    cosine_sum_bounds = []
    for a in range(len(groups)):
        for b in range(a + 1, len(groups)):
            farthest = (1 - groups[a] @ groups[b].t()).max()
            between = (2 * (1 - centroids[a] @ centroids[b])).clamp(min=0).sqrt()
            assert farthest <= (between + chord[a] + chord[b]) ** 2 / 2 + 1e-6
            cosine_sum_bounds.append(bool(farthest <= between ** 2 / 2 + chord[a] ** 2 / 2 + chord[b] ** 2 / 2))
    assert not all(cosine_sum_bounds)


def test_set_anchors_clusters_each_set_to_at_most_n_clusters():
    model = LocalizedLinearAdapter(12)
    model.set_anchors(unit(40, 12, seed=29), unit(5, 12, seed=30), n_clusters=10)
    assert model.image_anchors.shape == (10, 12) and model.text_anchors.shape == (5, 12)
    model.set_anchors(unit(40, 12, seed=29), None, n_clusters=0)
    assert model.image_anchors.shape == (40, 12) and model.text_anchors.shape == (5, 12)


# ---------------------------------------------------------------------------------------------
# State dict

def test_state_dict_round_trips_variable_anchor_sets_through_a_weights_only_file(tmp_path):
    torch.manual_seed(0)
    model = LocalizedLinearAdapter(16, beta=0.3, gamma=7.0, init="random")
    model.set_anchors(unit(7, 16, seed=31), unit(3, 16, seed=32))
    torch.save(model.state_dict(), tmp_path / "llu.pt")

    loaded = LocalizedLinearAdapter(16)  # default beta, gamma, identity g, no anchors
    loaded.load_state_dict(torch.load(tmp_path / "llu.pt", weights_only=True))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.image_anchors.shape == (7, 16) and loaded.beta.item() == pytest.approx(0.3)

    bigger = LocalizedLinearAdapter(16)
    bigger.set_anchors(unit(20, 16, seed=33), unit(9, 16, seed=34))
    bigger.load_state_dict(torch.load(tmp_path / "llu.pt", weights_only=True))
    images, texts = unit(11, 16, seed=35), unit(4, 16, seed=36)
    assert torch.equal(bigger.logits(images, texts, 100.0), model.logits(images, texts, 100.0))


def test_dirac_mask_trains_everywhere_and_masks_at_evaluation_as_the_authors_code():
    anchors = unit(4, 64, seed=8)
    model = LocalizedLinearAdapter(64, beta=0.5, mask="dirac")
    model.set_anchors(anchors, anchors)
    far = unit(5, 64, seed=30)
    model.train()
    assert torch.equal(interpolation_weight(far, anchors, model.beta, model.gamma, "dirac"), torch.zeros(5))
    with torch.no_grad():
        model.adapter("image").bias.fill_(0.1)
        moved = model.transform_image(far)
    assert not torch.allclose(moved, far)  # alpha = beta in training, even far from every anchor
    model.eval()
    with torch.no_grad():
        assert_close(model.transform_image(far), far, rel=1e-6)
    assert DIRAC_THRESHOLD == 1e-3  # the authors' 1 - round(d + 0.499): weight 1 below d = 1e-3

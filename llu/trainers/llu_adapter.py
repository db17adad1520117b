"""The LLU adapter (Ibing, Lim and Kobbelt, "Localized Latent Updates", Section 3.2), in plain torch.

Affine functions g(x) = W x + b act on frozen, unit-norm CLIP embeddings f. Each adapted embedding is
blended with f by a weight alpha(x, D) that is beta at the data D the adapter was trained on and
decays with the cosine distance to it (Eq. 4-5), so that far from D the zero-shot embedding is kept.
An identity regulariser (Eq. 6) keeps g close to the identity, and g starts as the identity. D is
stored per encoder (D_image, D_text), reduced by complete-linkage clustering when it is large.

This file imports nothing from the rest of the project (torch, and huggingface_hub for the
``save_pretrained`` / ``from_pretrained`` folder layout) and works on any embedding tensors:
``from llu import LocalizedLinearAdapter`` loads this module alone. ``llu export`` of an LLU run writes
a folder that ``LocalizedLinearAdapter.from_pretrained(folder)`` reads.

    adapter = LocalizedLinearAdapter(512)                    # beta 0.5, gamma 20, identity init
    adapter.fit(train_image_features, train_labels, class_text_features)  # sets anchors, trains
    logits = adapter.logits(test_image_features, class_text_features, logit_scale=100.0)

Table 4's ablations are constructor / fit arguments: "no cluster" n_clusters=0, "no damp" beta=1,
"no mask" gamma=0, "Dirac mask" mask="dirac", "no reg" lam=0, "rand. init" init="random", "Linear"
beta=1, gamma=0, init="random", lam=0 (alpha = 1 everywhere: a plain linear adapter).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

# Dirac mask: a point counts as "at" an anchor when 1 - cos <= this (the authors' code: 1e-3, an
# angle of 2.6 degrees). It is far above float32 round-off of a 512-d cosine (~1e-7) and below the
# distance between two distinct images' CLIP features (1 - cos is typically > 1e-2).
DIRAC_THRESHOLD = 1e-3

# Largest [rows, anchors] block of cosines held at once (16 MiB in float32).
_CHUNK_ELEMENTS = 1 << 22


class AffineAdapter(nn.Linear):
    """g(x) = W x + b. "identity": W = I, b = 0 (Section 3.2); "random": nn.Linear's own
    initialisation (Table 4, "rand. init")."""

    def __init__(self, dim, init="identity"):
        if init not in ("identity", "random"):
            raise ValueError(f"init must be 'identity' or 'random', got {init!r}")
        super().__init__(dim, dim)  # nn.Linear.__init__ applies the random initialisation
        if init == "identity":
            with torch.no_grad():
                nn.init.eye_(self.weight)
                nn.init.zeros_(self.bias)


def _max_cosine(x, anchors):
    """max_{d in D} x^T d per row of x, in row chunks so that 10^5 x 10^4 cosines never coexist."""
    rows = max(1, _CHUNK_ELEMENTS // anchors.shape[0])
    return torch.cat([(chunk @ anchors.t()).amax(dim=1) for chunk in x.split(rows)])


def interpolation_weight(x, anchors, beta, gamma, mask="exp", dirac_threshold=DIRAC_THRESHOLD):
    """Eq. 5: alpha(x, D) = beta * max_{d in D} exp(-gamma (1 - x^T d)), one value per row of x.

    exp is decreasing in the distance, so the max over anchors is taken on the cosine and exp is
    applied once. x and the anchors are normalised here (1 - x^T d is a distance only for unit
    vectors) and the cosine is clamped to [-1, 1], so alpha lies in [0, beta]. gamma = 0 gives
    alpha = beta everywhere (CLIP-Adapter's global alpha). mask="dirac" (gamma -> infinity) gives
    beta where 1 - max cos <= dirac_threshold and 0 elsewhere. An empty D gives alpha = 0.
    """
    if mask not in ("exp", "dirac"):
        raise ValueError(f"mask must be 'exp' or 'dirac', got {mask!r}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    if anchors.shape[0] == 0:
        return x.new_zeros(x.shape[0], dtype=dtype)
    x = F.normalize(x.to(dtype), dim=-1)
    anchors = F.normalize(anchors.to(device=x.device, dtype=dtype), dim=-1)
    distance = 1 - _max_cosine(x, anchors).clamp(-1, 1)
    if mask == "dirac":
        return beta * (distance <= dirac_threshold).to(dtype)
    return beta * torch.exp(-gamma * distance)


def localized_update(f, adapter, alpha):
    """Eq. 4 with a local alpha: normalize(alpha * normalize(g(f)) + (1 - alpha) * f), f normalised.

    Both ends of the blend are unit vectors, so alpha weighs two points on the sphere whatever the
    norm of g(f) (which under a random init is far from 1), and the result is renormalised because
    the logits of Eq. 1 are cosines. At alpha = 0 the result is f, at alpha = 1 it is g(f)/|g(f)|.
    """
    f = F.normalize(f, dim=-1)
    alpha = alpha.unsqueeze(-1).to(f.dtype)
    return F.normalize(alpha * F.normalize(adapter(f), dim=-1) + (1 - alpha) * f, dim=-1)


_identities = {}


def _identity(dim, dtype, device):
    """The identity matrix, made once per (size, dtype, device): the regulariser runs every step."""
    key = (dim, dtype, str(device))
    if key not in _identities:
        _identities[key] = torch.eye(dim, dtype=dtype, device=device)
    return _identities[key]


def identity_regularizer(adapters, form="mse"):
    """Eq. 6 without lambda: the distance of every affine adapter g = W x + b to the identity, summed.

    "mse": mean((W - I)^2) + mean(b^2). This is the form whose values match Table 4: nn.Linear's
    random init on d = 512 gives 1/(3d) + 1/d + 1/(3d) = 3.26e-3 per adapter, 6.5e-3 for the image
    and text adapters (Table 4, "Linear": 6.5e-3; "rand. init", regularised: 3.6e-3).
    "norm": ||W - I||_F + ||b||_2 as Eq. 6 is written; the same init gives about 26.7 per adapter.
    The caller multiplies by lambda, so the unweighted value can be logged.
    """
    if form not in ("mse", "norm"):
        raise ValueError(f"form must be 'mse' or 'norm', got {form!r}")
    total = 0.0
    for g in adapters:
        eye = _identity(g.weight.shape[0], g.weight.dtype, g.weight.device)
        if form == "mse":  # mse_loss: mean((W - I)^2) in one kernel each way
            total = total + F.mse_loss(g.weight, eye) + g.bias.pow(2).mean()
        else:
            total = total + torch.linalg.matrix_norm(g.weight - eye) + torch.linalg.vector_norm(g.bias)
    return torch.as_tensor(total)


# ---------------------------------------------------------------------------------------------
# Clustering the anchor sets

@torch.no_grad()
def complete_linkage(features, n_clusters):
    """Agglomerative clustering of rows of ``features`` on the cosine distance 1 - cos, merging the
    two clusters whose *farthest* members are closest (complete linkage), until n_clusters remain.

    Returns (assignment [n], heights [n - n_clusters]): cluster ids 0..k-1 numbered by their smallest
    member index, and the distance of each merge in order. ``cosine_distances`` holds the current
    cluster distances (4 n^2 bytes: 1.0 GB at n = 16,000); see there for how merges update it.
    """
    x = F.normalize(features.detach().float(), dim=-1)
    return _complete_linkage(cosine_distances(x), n_clusters)


def cosine_distances(x):
    """The float32 matrix 1 - x x^T, built in row blocks, diagonal +inf."""
    n = x.shape[0]
    distance = torch.empty(n, n, dtype=torch.float32, device=x.device)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n, rows):
        block = distance[start:start + rows]
        torch.mm(x[start:start + rows], x.t(), out=block)
        block.neg_().add_(1.0)
    distance.fill_diagonal_(math.inf)
    return distance


# Retired rows and columns are dropped from the matrix when the active clusters fall to this
# fraction of its size, so that later merges scan shorter rows and write shorter columns.
_COMPACT_FRACTION = 0.7


def _complete_linkage(distance, n_clusters):
    """Complete linkage on a distance matrix (overwritten). A merge of i and j replaces row and column
    i by max(d(., i), d(., j)) (Lance-Williams for complete linkage) and retires j. Each row caches
    its nearest neighbour; as complete-linkage distances never decrease, only rows whose cached
    neighbour was i or j are rescanned. Ties go to the lowest index (deterministic)."""
    n = distance.shape[0]
    n_merges = n - max(1, int(n_clusters))
    storage = distance.view(-1)
    nearest_distance, nearest = distance.min(dim=1)
    active = torch.ones(n, dtype=torch.bool, device=distance.device)
    point = torch.arange(n, device=distance.device)  # the original index of each row
    parent = list(range(n))  # merged clusters point at the cluster they went into
    heights = torch.empty(max(n_merges, 0), dtype=torch.float32)
    alive = size = n
    for step in range(n_merges):
        a = int(nearest_distance.argmin())
        b = int(nearest[a])
        i, j = min(a, b), max(a, b)
        heights[step] = nearest_distance[a]
        active[j] = False
        nearest_distance[j] = math.inf
        parent[int(point[j])] = int(point[i])
        merged = torch.maximum(distance[i], distance[j])  # d(k, i u j) = max(d(k, i), d(k, j))
        merged[i] = math.inf
        distance[i] = merged
        distance[:, i] = merged  # retired rows get values too: never read
        stale = ((nearest == i) | (nearest == j)) & active
        stale[i] = True
        stale = stale.nonzero().squeeze(1)
        nearest_distance[stale], nearest[stale] = distance[stale].masked_fill_(~active, math.inf).min(dim=1)
        alive -= 1
        if alive <= _COMPACT_FRACTION * size and step + 1 < n_merges:
            keep = active.nonzero().squeeze(1)
            distance, size = _compact(storage, distance, keep), keep.numel()
            renumber = torch.full_like(nearest, -1)
            renumber[keep] = torch.arange(size, device=keep.device)
            nearest, nearest_distance = renumber[nearest[keep]], nearest_distance[keep]
            point, active = point[keep], active[keep]
    return _roots(parent), heights


def _compact(storage, distance, keep):
    """The rows and columns ``keep`` of ``distance``, moved to the front of its own storage (each row
    lands at or before where it was read, so copying in order overwrites nothing still needed)."""
    m = keep.numel()
    for row, source in enumerate(keep.tolist()):
        storage[row * m:(row + 1) * m] = distance[source, keep]
    return storage[:m * m].view(m, m)


def _roots(parent):
    """Cluster ids 0..k-1 (numbered by smallest member) of each point, following the merges."""
    root = parent[:]
    for point in range(len(root)):
        top = root[point]
        while root[top] != top:
            top = root[top]
        root[point] = top
    return torch.unique(torch.tensor(root), return_inverse=True)[1]


# Above this many features, the exact complete linkage's n x n matrix (4 n^2 bytes: 1.6 GB at
# 20,000) gives way to ``micro_cluster_linkage``.
EXACT_CLUSTER_LIMIT = 20000
MICRO_CLUSTERS_PER_CLUSTER = 4  # micro-clusters per final cluster in the scalable path
KMEANS_ITERATIONS = 10
KMEANS_SAMPLE_PER_CENTRE = 32  # the micro-clusters' centres are fitted on this many points per centre


_ROWS = 8192  # rows of a large feature set handled at once


def _chunks(x):
    """Unit-norm row chunks of x, so that a normalised copy of a large x never exists at once. Each
    chunk is written into the same buffer (use it before taking the next): a million features then
    pass through a fixed few MB instead of a new allocation per chunk, whose freed blocks the
    allocator may keep."""
    buffer = torch.empty(min(_ROWS, x.shape[0]), x.shape[1], dtype=torch.float32, device=x.device)
    for chunk in x.split(_ROWS):
        yield F.normalize(chunk.float(), dim=-1, out=buffer[:chunk.shape[0]])


def _nearest_centre(x, centres):
    logits = torch.empty(min(_ROWS, x.shape[0]), centres.shape[0], dtype=torch.float32, device=x.device)
    return torch.cat([torch.mm(chunk, centres.t(), out=logits[:chunk.shape[0]]).argmax(dim=1)
                      for chunk in _chunks(x)])


@torch.no_grad()
def spherical_kmeans(x, n_centres, iterations=KMEANS_ITERATIONS, sample=None, seed=0):
    """Unit-norm centres of k-means on the sphere (cosine), fitted on a seeded sample of x's rows."""
    generator = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    if sample is not None and sample < n:
        x = x[torch.randperm(n, generator=generator)[:sample].sort().values.to(x.device)]
    x = F.normalize(x.float(), dim=-1)
    centres = x[torch.randperm(x.shape[0], generator=generator)[:n_centres].sort().values.to(x.device)].clone()
    for _ in range(iterations):
        assignment = _nearest_centre(x, centres)
        sums = torch.zeros_like(centres).index_add_(0, assignment, x)
        filled = torch.bincount(assignment, minlength=centres.shape[0]) > 0
        centres = torch.where(filled[:, None], F.normalize(sums, dim=-1), centres)  # an empty one stays
    return centres


@torch.no_grad()
def micro_cluster_linkage(features, n_clusters, micro_clusters=None):
    """Complete linkage at any scale: spherical k-means reduces the features to ``micro_clusters``
    (default 4 per final cluster), then the exact complete linkage runs on those, with the distance
    between two micro-clusters bounding their farthest members' 1 - cos from above, as complete
    linkage measures it: with the chord |a - b| = sqrt(2 (1 - cos)), a metric, it is
    (chord between the centroids + both radii)^2 / 2, a radius being the longest chord from a member
    to its centroid. Memory beyond the features: a few chunks and the micro-clusters'
    matrix. Returns the assignment [n] (cluster ids numbered by their smallest member index)."""
    n = features.shape[0]
    m = min(n, micro_clusters or MICRO_CLUSTERS_PER_CLUSTER * n_clusters)
    centres = spherical_kmeans(features, m, sample=KMEANS_SAMPLE_PER_CENTRE * m)
    micro = _nearest_centre(features, centres)
    sums = torch.zeros_like(centres)
    for chunk, labels in zip(_chunks(features), micro.split(_ROWS)):
        sums.index_add_(0, labels, chunk)
    used = torch.unique(micro)  # micro-clusters with members, in order
    centroids = F.normalize(sums[used], dim=-1)
    renumber = torch.full((m,), -1, dtype=torch.long, device=micro.device)
    renumber[used] = torch.arange(used.numel(), device=micro.device)
    micro = renumber[micro]
    radius = torch.zeros(used.numel(), device=centroids.device)  # the longest 1 - cos, then as a chord
    own_centroid = torch.empty(min(_ROWS, n), centroids.shape[1], device=centroids.device)
    for chunk, labels in zip(_chunks(features), micro.split(_ROWS)):
        paired = torch.index_select(centroids, 0, labels, out=own_centroid[:labels.shape[0]]).mul_(chunk)
        radius.scatter_reduce_(0, labels, 1 - paired.sum(dim=1), reduce="amax")
    radius = (2 * radius.clamp(min=0)).sqrt()
    distance = cosine_distances(centroids)
    distance = ((2 * distance.clamp_(min=0)).sqrt_().add_(radius[:, None]).add_(radius[None, :])).square_().mul_(0.5)
    clusters, _ = _complete_linkage(distance, n_clusters)
    # Renumber the final clusters by their smallest member, as the exact path does.
    first = torch.full((int(clusters.max()) + 1,), n, dtype=torch.long, device=micro.device)
    assignment = clusters[micro]
    first.scatter_reduce_(0, assignment, torch.arange(n, device=micro.device), reduce="amin")
    return first.argsort().argsort()[assignment]


@torch.no_grad()
def cluster_anchors(features, n_clusters, exact_limit=EXACT_CLUSTER_LIMIT):
    """The anchor set D of Eq. 5 for a set of features (Section 3.2, "Clustering").

    With at most n_clusters features (or n_clusters <= 0, Table 4's "no cluster") the normalised
    features are the anchors; otherwise complete-linkage clusters (exact up to ``exact_limit``
    features, ``micro_cluster_linkage`` above), each represented by the normalised mean of its
    members. Returns (anchors [k, d] unit vectors, assignment [n]).
    """
    n = features.shape[0]
    if n_clusters <= 0 or n <= n_clusters:
        x = F.normalize(features.detach().to(torch.promote_types(features.dtype, torch.float32)), dim=-1)
        return x, torch.arange(n, device=x.device)
    if n <= exact_limit:
        assignment = complete_linkage(features, n_clusters)[0].to(features.device)
    else:
        assignment = micro_cluster_linkage(features, n_clusters)
    sums = torch.zeros(int(assignment.max()) + 1, features.shape[1], device=features.device)
    for chunk, labels in zip(_chunks(features.detach()), assignment.split(_ROWS)):
        sums.index_add_(0, labels, chunk)
    return F.normalize(sums, dim=-1), assignment


# ---------------------------------------------------------------------------------------------
# The adapter

class LocalizedLinearAdapter(nn.Module, PyTorchModelHubMixin):
    """Localized linear updates of image and text embeddings (Section 3.2).

    dim: embedding size. beta, gamma, mask: Eq. 5. init: "identity" or "random". shared: one g for
    images and texts (g_I = g_T). adapt: which embeddings are updated ("both", "image", "text").
    reg_form: Eq. 6's form (see ``identity_regularizer``). beta, gamma and both anchor sets are
    buffers, so they travel in the state dict; the anchor sets change size with ``set_anchors``.
    """

    def __init__(self, dim, beta=0.5, gamma=20.0, mask="exp", init="identity", shared=False, adapt="both",
                 reg_form="mse", dirac_threshold=DIRAC_THRESHOLD):
        super().__init__()
        sides = {"both": ("image", "text"), "image": ("image",), "text": ("text",)}
        if adapt not in sides:
            raise ValueError(f"adapt must be 'both', 'image' or 'text', got {adapt!r}")
        if mask not in ("exp", "dirac"):
            raise ValueError(f"mask must be 'exp' or 'dirac', got {mask!r}")
        if reg_form not in ("mse", "norm"):
            raise ValueError(f"reg_form must be 'mse' or 'norm', got {reg_form!r}")
        if not 0.0 <= beta <= 1.0 or gamma < 0:
            raise ValueError(f"need 0 <= beta <= 1 and gamma >= 0, got beta={beta}, gamma={gamma}")
        self.sides, self.shared, self.mask = sides[adapt], shared, mask
        self.dim, self.init, self.adapt = dim, init, adapt
        self.reg_form, self.dirac_threshold = reg_form, dirac_threshold
        names = ("shared",) if shared else self.sides
        self.adapters = nn.ModuleDict({name: AffineAdapter(dim, init) for name in names})
        self.register_buffer("beta", torch.tensor(float(beta)))
        self.register_buffer("gamma", torch.tensor(float(gamma)))
        self.register_buffer("image_anchors", torch.empty(0, dim))  # D_image
        self.register_buffer("text_anchors", torch.empty(0, dim))  # D_text

    def init_arguments(self):
        """The constructor's arguments as JSON values (config.json of ``save_pretrained`` / ``llu export``)."""
        return {"dim": self.dim, "beta": float(self.beta), "gamma": float(self.gamma), "mask": self.mask,
                "init": self.init, "shared": self.shared, "adapt": self.adapt, "reg_form": self.reg_form,
                "dirac_threshold": self.dirac_threshold}

    def save_pretrained(self, save_directory, *, config=None, **kwargs):
        """config.json (the constructor's arguments) and model.safetensors (W, b, beta, gamma, anchors)."""
        return super().save_pretrained(save_directory, config=config or self.init_arguments(), **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """An adapter from a ``save_pretrained`` or ``llu export`` folder (or a Hub repository): every
        tensor must be there (strict), the anchor sets take their saved sizes."""
        kwargs.setdefault("strict", True)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def adapter(self, side):
        """g_I or g_T (the same module when shared); None for a side that is not adapted."""
        if side not in self.sides:
            return None
        return self.adapters["shared" if self.shared else side]

    def set_anchors(self, image_features=None, text_features=None, n_clusters=512, exact_limit=EXACT_CLUSTER_LIMIT):
        """D_image and D_text: the features trained on, clustered to n_clusters each when larger
        (n_clusters <= 0: every feature is an anchor; above ``exact_limit`` features the scalable
        path). None leaves that set as it is."""
        for name, features in (("image_anchors", image_features), ("text_anchors", text_features)):
            if features is not None:
                old = getattr(self, name)
                anchors = cluster_anchors(features, n_clusters, exact_limit)[0]
                setattr(self, name, anchors.to(device=old.device, dtype=old.dtype))

    def interpolation_weights(self, f, side):
        """alpha(f, D_side) of Eq. 5 for each row of f (no gradient flows through it)."""
        if self.mask == "dirac" and self.training:
            # As the authors' code: the mask applies at evaluation only; in training alpha = beta, as
            # augmented views never lie at an anchor and g would get no gradient otherwise.
            return self.beta.expand(f.shape[0])
        anchors = self.image_anchors if side == "image" else self.text_anchors
        return interpolation_weight(f, anchors, self.beta, self.gamma, self.mask, self.dirac_threshold)

    def _transform(self, f, side, alpha=None):
        f = f.to(self.beta.dtype)
        g = self.adapter(side)
        if g is None:
            return F.normalize(f, dim=-1)
        if alpha is None:
            alpha = self.interpolation_weights(f, side)  # Eq. 5
        return localized_update(f, g, alpha)  # Eq. 4

    def transform_image(self, image_features, alpha=None):
        return self._transform(image_features, "image", alpha)

    def transform_text(self, text_features, alpha=None):
        """``alpha``: the texts' weights when the caller has them already (fixed texts: fixed weights)."""
        return self._transform(text_features, "text", alpha)

    def forward(self, image_features, text_features, logit_scale):
        return self.logits(image_features, text_features, logit_scale)

    def logits(self, image_features, text_features, logit_scale, text_alpha=None):
        """Eq. 1: logit_scale (1 / tau) times the cosine of the updated image and text embeddings."""
        return logit_scale * self.transform_image(image_features) @ self.transform_text(text_features, text_alpha).t()

    def regularizer(self):
        """Eq. 6 without lambda, over the distinct adapters."""
        return identity_regularizer(self.adapters.values(), self.reg_form)

    def loss(self, image_features, labels, text_features, logit_scale, lam=1e3):
        """Eq. 3 (cross-entropy over the classes) + lambda * Eq. 6. Returns (total, ce, reg)."""
        return self.objective(self.logits(image_features, text_features, logit_scale), labels, lam)

    def objective(self, logits, labels, lam=1e3):
        """``loss`` from logits already computed: (ce + lambda * reg, ce, reg)."""
        ce = F.cross_entropy(logits, labels)
        reg = self.regularizer()
        return ce + lam * reg, ce, reg

    def fit(self, image_features, labels, class_text_features, epochs=200, lr=0.002, lam=1e3, batch_size=32,
            n_clusters=512, logit_scale=100.0, momentum=0.9, weight_decay=5e-4, seed=0):
        """Train g on feature tensors with CoOp's optimiser (SGD, momentum 0.9, weight decay 5e-4,
        cosine schedule over the epochs; no warm-up) and return the mean loss of each epoch.

        The anchors are first set to the training images and the class texts (n_clusters=None keeps
        the anchors already set, e.g. un-augmented features while training on augmented ones).
        logit_scale 100 is CLIP's learned 1 / tau.
        """
        device = self.beta.device
        image_features, labels = image_features.to(device), labels.to(device)
        class_text_features = class_text_features.to(device)
        if n_clusters is not None:
            self.set_anchors(image_features, class_text_features, n_clusters)
        optimizer = torch.optim.SGD(self.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
        generator = torch.Generator().manual_seed(seed)
        history = []
        self.train()
        for _ in range(epochs):
            order = torch.randperm(labels.shape[0], generator=generator).to(device)
            losses = []
            for idx in order.split(batch_size):
                total, _, _ = self.loss(image_features[idx], labels[idx], class_text_features, logit_scale, lam)
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
                losses.append(total.item())
            scheduler.step()
            history.append(sum(losses) / len(losses))
        self.eval()  # ready to predict (the Dirac mask applies in eval mode only)
        return history

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The anchor sets have the size they were saved with: resize ours before copying into them.
        for name in ("image_anchors", "text_anchors"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                old = getattr(self, name)
                setattr(self, name, old.new_empty(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

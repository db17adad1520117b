"""Clustering an anchor set (the LLU paper, Section 3.2, "Clustering"): complete-linkage agglomerative
clustering on the cosine distance, exact up to ``EXACT_CLUSTER_LIMIT`` features and scalable above
(spherical k-means micro-clusters, then complete linkage on those); each cluster is represented by
the normalised mean of its members (``cluster_anchors``).

Like ``llu_adapter.py``, which uses it, this file imports nothing from the rest of the project
(torch and NumPy only): ``from llu import cluster_anchors, complete_linkage`` loads these two modules alone.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

# Largest [rows, columns] block of cosines held at once (16 MiB in float32).
_CHUNK_ELEMENTS = 1 << 22


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
    neighbour was i or j are rescanned. Ties go to the lowest index (deterministic).

    The merge loop runs on NumPy views of the matrix (on the CPU; a matrix on another device is
    copied there): each merge is a dozen vector operations on rows of n, where a call's fixed cost
    (about 1 us in NumPy, several in torch) was most of the loop's time at n = 2,000."""
    device = distance.device
    matrix = distance.cpu().numpy()
    n = matrix.shape[0]
    n_merges = n - max(1, int(n_clusters))
    storage = matrix.reshape(-1)
    nearest = matrix.argmin(axis=1)
    nearest_distance = matrix[np.arange(n), nearest]
    active = np.ones(n, dtype=bool)
    point = np.arange(n)  # the original index of each row
    parent = list(range(n))  # merged clusters point at the cluster they went into
    heights = np.empty(max(n_merges, 0), dtype=np.float32)
    alive = size = n
    for step in range(n_merges):
        a = int(nearest_distance.argmin())
        b = int(nearest[a])
        i, j = min(a, b), max(a, b)
        heights[step] = nearest_distance[a]
        active[j] = False
        nearest_distance[j] = np.inf
        parent[point[j]] = point[i]
        merged = np.maximum(matrix[i], matrix[j])  # d(k, i u j) = max(d(k, i), d(k, j))
        merged[i] = np.inf
        matrix[i] = merged
        matrix[:, i] = merged  # retired rows get values too: never read
        stale = (nearest == i) | (nearest == j)
        stale &= active
        stale[i] = True
        stale = stale.nonzero()[0]
        rows = matrix[stale]
        rows[:, ~active] = np.inf
        nearest[stale] = rows.argmin(axis=1)
        nearest_distance[stale] = rows[np.arange(stale.size), nearest[stale]]
        alive -= 1
        if alive <= _COMPACT_FRACTION * size and step + 1 < n_merges:
            keep = active.nonzero()[0]
            matrix, size = _compact(storage, matrix, keep), keep.size
            renumber = np.full(nearest.shape, -1)
            renumber[keep] = np.arange(size)
            nearest, nearest_distance = renumber[nearest[keep]], nearest_distance[keep]
            point, active = point[keep], active[keep]
    return _roots(parent).to(device), torch.from_numpy(heights)


def _compact(storage, distance, keep):
    """The rows and columns ``keep`` of ``distance``, moved to the front of its own storage (each row
    lands at or before where it was read, so copying in order overwrites nothing still needed)."""
    m = keep.size
    for row, source in enumerate(keep.tolist()):
        storage[row * m:(row + 1) * m] = distance[source, keep]
    return storage[:m * m].reshape(m, m)


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

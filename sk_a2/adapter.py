"""AttentionAdapter: a learned correction of the attention map, for when attention looks at the
wrong part of the image (Appendix G of the A² paper).

A small MLP maps each attention map ``A`` (the attention model's patch grid) to an adapted map
``Ã``; crops are then the ``k`` candidates of a fixed bank (``_dps.candidate_bank``)
holding the most ``Ã`` mass. The MLP is learned end to end: a differentiable selection over the
whole bank weighs the candidates' stored (whitened) embeddings, a logistic-regression head takes
gradient steps on some training images, and its cross-entropy on other training images is
back-propagated through those steps and the selection into the MLP. A validation set, never
optimised, can score the hard crops after every epoch and choose the epoch kept. See
``docs/adapter.md``.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

from ._base import MODEL_CONSTRAINTS, ImageInputMixin, ImageTransformerTagsMixin
from ._dps import box_mass_matrix, candidate_bank, hard_topk, perturbed_topk
from ._param_validation import FitTransformOnceMixin, Interval, StrOptions, validated_call
from .attention import HEAD_AGGREGATIONS
from .boxes import to_original
from .cropper import AttentionCropper
from .cropset import CropSet
from .device import resolve_device
from .embedder import CropEmbedder
from .images import as_sources

__all__ = [
    "AttentionAdapter",
    "DegenerateTrainingWarning",
    "adapt_maps",
    "relaxed_topk",
    "selection_scores",
]

_LOG_FLOOR = 1e-8
SELECTIONS = ("softmax", "perturbed")
#: Training images at most used to fit the validation head each epoch.
_VALIDATION_HEAD_MAX = 8192


class DegenerateTrainingWarning(UserWarning):
    """A setting of :class:`AttentionAdapter` leaves its outer loop too few steps to learn.

    Raised by ``fit`` when ``outer_batch_size`` is more than half of the training images: the
    held-out batches are then cut to half of them and every epoch is only two Adam steps.

    Examples
    --------
    >>> import warnings
    >>> from sk_a2.adapter import DegenerateTrainingWarning
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", DegenerateTrainingWarning)  # make it an error
    ...     issubclass(DegenerateTrainingWarning, UserWarning)
    True
    """


def adapt_maps(maps, coefs, intercepts):
    """``Ã = softmax(log A + MLP(A))`` for flattened maps (n, G), NumPy or torch alike.

    The MLP is ``tanh(x W₁ + b₁) W₂ + b₂`` on ``x = G·A − 1`` (the map scaled to mean 0); with
    ``W₂ = b₂ = 0`` (the initial state) ``Ã = A``.

    Parameters
    ----------
    maps : ndarray or Tensor of shape (n, G)
        Attention maps over the G patches, each summing to 1.
    coefs : sequence of two arrays or Tensors
        ``W₁`` of shape (G, hidden) and ``W₂`` of shape (hidden, G).
    intercepts : sequence of two arrays or Tensors
        ``b₁`` of shape (hidden,) and ``b₂`` of shape (G,).

    Returns
    -------
    ndarray or Tensor of shape (n, G)
        The adapted maps ``Ã``, each summing to 1 (same type as ``maps``).

    Examples
    --------
    >>> import numpy as np
    >>> from sk_a2.adapter import adapt_maps
    >>> maps = np.array([[0.1, 0.2, 0.3, 0.4]])
    >>> zero = [np.zeros((4, 2)), np.zeros((2, 4))], [np.zeros(2), np.zeros(4)]
    >>> np.allclose(adapt_maps(maps, *zero), maps)  # the initial MLP leaves A unchanged
    True
    >>> bias = [np.zeros((4, 2)), np.zeros((2, 4))], [np.zeros(2), np.log([4.0, 1, 1, 1])]
    >>> adapt_maps(maps, *bias).round(3)  # a bias on the first patch quadruples its odds
    array([[0.308, 0.154, 0.231, 0.308]])
    """
    lib = torch if isinstance(maps, torch.Tensor) else np
    x = maps * maps.shape[-1] - 1.0
    delta = lib.tanh(x @ coefs[0] + intercepts[0]) @ coefs[1] + intercepts[1]
    logits = lib.log(lib.clip(maps, _LOG_FLOOR, None)) + delta
    if lib is torch:
        return logits.softmax(-1)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def selection_scores(maps, mass_matrix):
    """Scores of the candidates for the differentiable selection: (n, m).

    The log of the fraction of each map's upsampled mass inside each candidate, standardised
    per image (mean 0, standard deviation 1 over the candidates), so ``sigma`` is in units of
    an image's own spread of scores. Ranking equals ranking by mass.

    Parameters
    ----------
    maps : Tensor of shape (n, G)
        Attention maps over the G patches.
    mass_matrix : Tensor of shape (G, m + 1)
        ``_dps.box_mass_matrix`` of the m candidates: column ``c`` gives the mass
        inside candidate ``c``, the last column the mass in the whole frame.

    Returns
    -------
    Tensor of shape (n, m)

    Examples
    --------
    >>> import torch
    >>> from sk_a2.adapter import selection_scores
    >>> mass = torch.zeros(16, 3, dtype=torch.float64)  # a 4 x 4 grid, two candidates
    >>> mass[[0, 1, 4, 5], 0] = 1.0  # candidate 0 holds the top-left 2 x 2 patches
    >>> mass[[10, 11, 14, 15], 1] = 1.0  # candidate 1 the bottom-right ones
    >>> mass[:, 2] = 1.0  # the whole frame
    >>> maps = torch.zeros(1, 16, dtype=torch.float64)
    >>> maps[0, 0] = 1.0  # all attention on the top-left patch
    >>> selection_scores(maps, mass).argmax(-1).tolist()
    [0]
    """
    mass = maps @ mass_matrix
    logm = torch.log(mass[:, :-1].clamp_min(1e-30)) - torch.log(mass[:, -1:])
    return (logm - logm.mean(-1, keepdim=True)) / logm.std(-1, keepdim=True).clamp_min(1e-12)


def relaxed_topk(scores, k, sigma):
    """Relaxed top-k over all candidates: (n, k, m), row ``j`` the weights of the j-th pick.

    Row 0 is ``p_0 = softmax(s / σ)``, the exact selection probabilities of top-1 under Gumbel
    noise of scale ``σ`` on the scores; each next row ``p_j = softmax(α_j / σ)`` has the mass
    already taken removed, ``α_0 = s``, ``α_j = α_{j-1} + log(1 − p_{j-1})`` (relaxed
    sampling without replacement). Every
    candidate gets a weight and a gradient, however low its score; as ``σ → 0`` the rows
    become the one-hot top-k, ranked by score.

    Parameters
    ----------
    scores : Tensor of shape (n, m)
        Scores of the m candidates (e.g. :func:`selection_scores`).
    k : int
        Picks per image, ``1 <= k <= m``.
    sigma : float
        Temperature (``> 0``).

    Returns
    -------
    Tensor of shape (n, k, m)
        Each row sums to 1; the k rows of an image sum to at most 1 per candidate.

    Examples
    --------
    >>> import torch
    >>> from sk_a2.adapter import relaxed_topk
    >>> s = torch.tensor([[2.0, 0.0, -2.0]], dtype=torch.float64)
    >>> relaxed_topk(s, 2, 0.01).round().tolist()  # small sigma: the hard top-2, by rank
    [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]
    >>> relaxed_topk(s, 1, 4.0).round(decimals=2).tolist()  # large sigma: every candidate
    [[[0.51, 0.31, 0.19]]]
    """
    alpha = scores.double()  # float64: log(1 − p) reaches −27.6, beyond any standardised gap
    rows = []
    for _ in range(k):
        p = (alpha / sigma).softmax(-1)
        rows.append(p)
        alpha = alpha + torch.log1p(-p.clamp(max=1.0 - 1e-12))
    return torch.stack(rows, 1).to(scores.dtype)


def _inner_fit(z, onehot, weight, steps, lr, alpha):
    """``steps`` gradient steps of weighted L2-penalised softmax regression from zero: (W, b).

    ``weight`` (n,) sums to 1. The gradient is written out, so the result stays differentiable
    in ``z``.
    """
    W = z.new_zeros((z.shape[1], onehot.shape[1]))
    b = z.new_zeros(onehot.shape[1])
    for _ in range(steps):
        g = ((z @ W + b).softmax(-1) - onehot) * weight[:, None]
        W = W - lr * (z.T @ g + alpha * W)
        b = b - lr * g.sum(0)
    return W, b


def _balance_weights(cells):
    """Per-image weights making every cell (group) weigh the same: (n,) float64, sum 1."""
    _, inverse, counts = np.unique(cells, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    return w / w.sum()


#: Fitting images of an outer step, in held-out batches.
FIT_BATCHES = 4
#: Principal components kept by the whitening of the candidate embeddings.
N_COMPONENTS = 64
_WHITEN_ROWS = 65536


def _whiten(emb, pool, rng):
    """Candidate embeddings (n, m, d) projected on the top principal components of the
    training images' candidates and whitened (unit variance each), then scaled to unit mean
    squared norm: (n, m, min(N_COMPONENTS, d)) float32. Gradient steps of the inner head then
    converge in tens of steps whatever the embedding model's spectrum."""
    rows = emb[pool].reshape(-1, emb.shape[-1])
    if len(rows) > _WHITEN_ROWS:
        rows = rows[rng.choice(len(rows), _WHITEN_ROWS, replace=False)]
    mean = rows.mean(0, dtype=np.float64)
    cov = np.cov(rows, rowvar=False, dtype=np.float64)
    values, vectors = np.linalg.eigh(np.atleast_2d(cov))
    r = min(N_COMPONENTS, len(values))
    values, vectors = values[::-1][:r], vectors[:, ::-1][:, :r]
    project = vectors / np.sqrt(np.clip(values, 1e-12 * max(values[0], 1e-30), None) * r)
    mean, project = mean.astype(np.float32), project.astype(np.float32)
    out = np.empty((*emb.shape[:2], r), dtype=np.float32)
    for start in range(0, len(emb), 1024):  # blocks: no full-size temporary
        out[start:start + 1024] = (emb[start:start + 1024] - mean) @ project
    return out


def _held_out_size(n_train, batch):
    """Held-out batch size: ``batch``, at most half of the training images (at least 1)."""
    return max(1, min(batch, n_train // 2))


def _worst_cell_accuracy(codes, pred, cells):
    return float(min(np.mean(pred[cells == c] == codes[cells == c]) for c in np.unique(cells)))


class _OuterLoop:
    """One fit's training state: the stored tensors, the MLP parameters and their optimiser.

    ``emb`` (n, m, d) is whitened on the training images (:func:`_whiten`) into a new
    (n, m, 64) array; ``pool`` and ``val`` index the training and validation images; ``weight``
    holds per-image loss weights (group balance) or is None.
    """

    def __init__(self, est, maps, emb, codes, weight, pool, val, mass, rng):
        self.est, self.codes, self.pool, self.val, self.rng = est, codes, pool, val, rng
        self.weight = weight
        self.emb = _whiten(emb, pool, rng)
        self.device = resolve_device(est.device)
        self.maps_t, self.emb_t = self.tensor(maps), self.tensor(self.emb)
        self.onehot = self.tensor(np.eye(int(codes.max()) + 1)[codes])
        self.mass = self.tensor(mass)
        self.gen = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
        G, h = maps.shape[1], est.hidden_size
        init = [rng.normal(0.0, 1.0 / np.sqrt(G), size=(G, h)), np.zeros(h), np.zeros((h, G)),
                np.zeros(G)]
        self.params = [self.tensor(p).requires_grad_() for p in init]
        self.opt = torch.optim.Adam(self.params, lr=est.outer_lr)

    def tensor(self, a):
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.device)

    def snapshot(self):
        return [p.detach().cpu().numpy().astype(np.float32) for p in self.params]

    def features(self, idx, sigma):
        """Selection-weighted candidate embeddings of images ``idx``: (len(idx), k·d)."""
        est = self.est
        idx = torch.as_tensor(idx, device=self.device)
        adapted = adapt_maps(self.maps_t[idx], self.params[0::2], self.params[1::2])
        scores = selection_scores(adapted, self.mass)
        if est.selection == "softmax":
            sel = relaxed_topk(scores, est.n_crops, sigma)
        else:
            sel = perturbed_topk(scores, est.n_crops, sigma, est.n_samples, generator=self.gen)
        return torch.einsum("nkc,ncd->nkd", sel, self.emb_t[idx]).reshape(len(idx), -1)

    def batch_weight(self, idx):
        if self.weight is None:
            return self.tensor(np.full(len(idx), 1.0 / len(idx)))
        w = self.weight[idx]
        return self.tensor(w / w.sum())

    def step(self, fit_batch, out_batch, sigma):
        """One Adam step on the held-out loss of the head fitted on ``fit_batch``."""
        est = self.est
        self.opt.zero_grad()
        W, b = _inner_fit(self.features(fit_batch, sigma), self.onehot[fit_batch],
                          self.batch_weight(fit_batch), est.inner_steps, est.inner_lr,
                          est.inner_alpha)
        logp = (self.features(out_batch, sigma) @ W + b).log_softmax(-1)
        loss = -(self.batch_weight(out_batch) * (self.onehot[out_batch] * logp).sum(-1)).sum()
        penalty = 0.5 * est.outer_alpha * sum((p ** 2).sum() for p in self.params[0::2])
        (loss + penalty).backward()
        self.opt.step()
        return float(loss.detach())

    def epoch(self, batch, sigma):
        """One pass over the training images: (mean held-out loss, steps).

        The images are dealt into held-out batches of ``batch``; each step fits the inner head
        on up to ``FIT_BATCHES × batch`` of the other images, drawn anew, so every image is in
        turn held out and fitted on and none is held out for good.
        """
        order = self.rng.permutation(self.pool)
        held = _held_out_size(len(order), batch)
        n_steps = len(order) // held
        losses = []
        for s in range(n_steps):
            out = order[s * held:(s + 1) * held]
            rest = np.concatenate([order[:s * held], order[(s + 1) * held:]])
            fit = self.rng.choice(rest, min(len(rest), FIT_BATCHES * batch), replace=False)
            losses.append(self.step(fit, out, sigma))
        return float(np.mean(losses)), n_steps

    def hard_choice(self):
        """Hard top-k of every image under the current ``Ã``, in bank order: (n, k)."""
        with torch.no_grad():
            adapted = adapt_maps(self.maps_t, self.params[0::2], self.params[1::2])
            mass = adapted.double() @ self.mass.double()
            return hard_topk((mass[:, :-1] / mass[:, -1:]).cpu(), self.est.n_crops).numpy()

    def validation(self, cells):
        """(worst-cell accuracy, log-loss) on the validation images of a logistic regression
        fitted on the training images' hard crops; ``cells``: groups (or classes) of ``val``."""
        idx = self.hard_choice()
        X = self.emb[np.arange(len(idx))[:, None], idx].reshape(len(idx), -1)
        train = self.pool
        if len(train) > _VALIDATION_HEAD_MAX:
            train = self.rng.choice(train, _VALIDATION_HEAD_MAX, replace=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head = LogisticRegression(max_iter=300).fit(X[train], self.codes[train])
        proba = head.predict_proba(X[self.val])
        codes = np.searchsorted(head.classes_, self.codes[self.val])
        pred = head.classes_[proba.argmax(1)]
        loss = -np.mean(np.log(np.clip(proba[np.arange(len(codes)), codes], 1e-12, None)))
        return _worst_cell_accuracy(self.codes[self.val], pred, cells), float(loss)


class AttentionAdapter(
    ImageInputMixin, ImageTransformerTagsMixin, FitTransformOnceMixin, TransformerMixin,
    BaseEstimator
):
    """Learned attention adapter with differentiable patch selection (A² + adapter).

    Stands where :class:`AttentionCropper` stands: ``fit(X, y)`` learns an MLP that turns the
    attention model's CLS attention ``A`` into ``Ã``; ``transform(X)`` returns a
    :class:`CropSet` with the ``n_crops`` candidates of the fixed bank that hold the most ``Ã``
    mass (hard top-k, in bank order), so :class:`CropEmbedder` and any head follow unchanged.

    The bank (``_dps.candidate_bank``): 49 crops of 64 px on a 7 × 7 grid and 9 of
    32 px on a 3 × 3 grid of the 224-pixel frame, scaled with ``image_size``. In ``fit`` every
    candidate of every image is embedded once by the frozen embedding model at
    ``embedding_size`` (through ``cache``: a refit with other training settings runs no model);
    training then only weighs those stored embeddings.

    Training (``docs/adapter.md``): each epoch deals the training images into held-out batches
    of ``outer_batch_size``; for each, a softmax regression takes ``inner_steps`` gradient steps
    (``inner_lr``, L2 ``inner_alpha``) from zero on up to ``4 · outer_batch_size`` other training
    images, and its cross-entropy on the held-out batch is minimised over the MLP by Adam
    (``outer_lr``, L2 ``outer_alpha`` on the MLP weights), through the inner steps and the
    selection. The selection (``selection``) weighs the candidates' embeddings, whitened on the
    training images (64 principal components), at a temperature annealed from ``sigma`` to
    ``sigma_final``. With ``groups``, both losses weigh every group equally. With a validation
    set (``X_val``, or ``validation_fraction`` of ``X`` with ``early_stopping=True``), the hard
    crops are scored after every epoch (``validation_scores_``), the best epoch's MLP is kept
    and training stops after ``n_iter_no_change`` epochs without improvement.

    Parameters
    ----------
    attention_model, embedding_model : str or torch.nn.Module, default="dinov2_vits14"
        The attention model (its map is ``A``) and the frozen embedding model of the candidates
        (forms as in :class:`AttentionCropper`).
    attention_weights, embedding_weights : str or path-like, default=None
        Local state-dict files for the two models.
    n_crops : int, default=2
        Crops per image, at most 58 (the bank size).
    image_size : int, default=224
        Square input side of the attention model, and the frame of the bank.
    embedding_size : int or None, default=None
        Square input side of the embedding model: each candidate is cut from the image resized
        to this side and resized to it (as :class:`CropEmbedder` with ``image_size`` equal to
        it does; use that setting downstream). ``None``: ``image_size``.
    head_aggregation : str, default="mean"
        How the attention heads combine (see :mod:`sk_a2.attention`).
    hidden_size : int, default=6
        Hidden units of the MLP (6 on a 16 × 16 grid: 3,334 parameters).
    inner_steps : int, default=50
        Gradient steps of the inner logistic regression (``T``).
    inner_lr : float, default=4.0
        Step size of the inner steps (on whitened features of unit mean squared norm per
        crop).
    inner_alpha : float, default=1e-3
        L2 penalty of the inner logistic regression.
    outer_epochs : int, default=50
        Most passes over the training images (fewer with early stopping).
    outer_lr : float, default=0.05
        Adam step size of the MLP.
    outer_alpha : float, default=0.1
        L2 penalty on the MLP's weights ``W₁``, ``W₂`` (not on the biases), added to the
        held-out loss: it keeps the MLP from learning image-specific selections.
    outer_batch_size : int, default=64
        Held-out images per outer step (at most half of the training images: larger values
        are cut, with a :class:`DegenerateTrainingWarning`); an epoch has
        ``n_train // outer_batch_size`` steps.
    selection : {"softmax", "perturbed"}, default="softmax"
        The differentiable selection: ``"softmax"``, :func:`relaxed_topk` over the whole bank
        (closed form, every candidate weighted); ``"perturbed"``, perturbed top-k with
        ``n_samples`` Gaussian draws (``_dps.perturbed_topk``, the paper's DPS).
    sigma : float, default=4.0
        Temperature (noise scale) of the selection at the first epoch, in units of each image's
        standard deviation of the candidates' log mass (see :func:`selection_scores`): high
        enough for every candidate to get weight and gradient at first.
    sigma_final : float or None, default=0.5
        Temperature at the last epoch, reached geometrically (so training ends close to the
        hard top-k of ``transform``); ``None``: ``sigma`` throughout.
    n_samples : int, default=32
        Noise draws per image and step of ``selection="perturbed"``.
    early_stopping : "auto" or bool, default="auto"
        Keep the epoch with the best validation score and stop after ``n_iter_no_change``
        epochs without improvement. ``"auto"``: when ``X_val`` is given (otherwise every image
        of ``X`` trains, all ``outer_epochs`` run and the last MLP is kept). ``True``: on
        ``X_val``, or else on ``validation_fraction`` of ``X`` set aside. ``False``: never;
        ``X_val``, when given, is still scored after every epoch.
    validation_fraction : float, default=0.2
        Share of ``X`` (stratified by group, else by class) set aside for early stopping when
        ``early_stopping=True`` and no ``X_val`` is given, in (0, 1).
    n_iter_no_change : int, default=20
        Epochs without a better validation score before training stops.
    batch_size : int, default=32
        Model inputs per forward pass of the attention and embedding models.
    device : str, default="auto"
        Device of the models and of training.
    precision : {"auto", "float32", "bfloat16"}, default="auto"
        Numeric precision of the attention and embedding forwards, as in
        :class:`~sk_a2.AttentionCropper` and :class:`~sk_a2.CropEmbedder` (``"auto"``: attention
        in float32, embeddings in bf16 where the device computes it natively; see
        :mod:`sk_a2.precision`). The adapter itself trains in float32.
    cache : None, "memory" or path, default="memory"
        Cache of attention maps and candidate embeddings (:mod:`sk_a2.cache`); with it, refits
        (other hyper-parameters, ``GridSearchCV``) run neither model again. ``None``: each
        ``fit`` embeds the bank again.
    random_state : int, RandomState or None, default=None
        Validation split, MLP initialisation, whitening sample, batches and noise.
    verbose : bool, default=False
        Print the held-out loss and the validation score after every epoch.

    Attributes
    ----------
    coefs_, intercepts_ : list of ndarray
        MLP weights ``[W₁ (G, h), W₂ (h, G)]`` and biases ``[b₁ (h,), b₂ (G,)]``, float32.
    grid_size_ : tuple of int
        The attention model's patch grid.
    candidate_boxes_ : ndarray of shape (58, 4)
        The bank in the ``image_size`` frame.
    crop_sizes_ : list of int
        The sides of the bank's candidates, largest first (each chosen crop has one of them).
    classes_ : ndarray
        Labels seen in ``fit``.
    loss_curve_ : list of float
        Mean held-out cross-entropy of the outer steps of each epoch: the objective being
        optimised, on training images (it falls whether or not the crops improve; watch
        ``validation_scores_``).
    validation_scores_ : list of float or None
        Validation score before training (index 0: the raw attention) and after each epoch:
        the worst-group accuracy (worst-class without groups) on the validation set of a
        logistic regression fitted on the training images' hard crops (their whitened stored
        embeddings). ``None`` without a validation set.
    best_validation_score_ : float or None
        The score of the epoch kept (``None`` without early stopping).
    best_epoch_ : int
        The epoch whose MLP is kept (0: the untrained adapter, ``Ã = A``); ties in the score
        go to the lower validation log-loss of the same head.
    n_iter_ : int
        Epochs run.
    n_steps_ : int
        Outer (Adam) steps run.

    Examples
    --------
    >>> from sk_a2 import AttentionAdapter
    >>> from sk_a2.datasets import make_spurious_images
    >>> data = make_spurious_images(n_samples=20, image_size=56, random_state=0)
    >>> adapter = AttentionAdapter("imgfocus_vits14", "imgfocus_vits14", image_size=56,
    ...                            n_crops=1, outer_epochs=1, outer_batch_size=4,
    ...                            device="cpu", random_state=0)
    >>> crops = adapter.fit(data.images[:12], data.target[:12]).transform(data.images[:3])
    >>> crops
    CropSet(n_images=3, n_crops=1)
    >>> adapter.adapted_maps(data.images[:3]).shape
    (3, 4, 4)
    """

    _parameter_constraints: dict = {
        "attention_model": MODEL_CONSTRAINTS["model"],
        "embedding_model": MODEL_CONSTRAINTS["model"],
        "attention_weights": MODEL_CONSTRAINTS["weights"],
        "embedding_weights": MODEL_CONSTRAINTS["weights"],
        "n_crops": [Interval(Integral, 1, None, closed="left")],
        "image_size": MODEL_CONSTRAINTS["image_size"],
        "embedding_size": [None, *MODEL_CONSTRAINTS["image_size"]],
        "head_aggregation": [StrOptions(HEAD_AGGREGATIONS)],
        "hidden_size": [Interval(Integral, 1, None, closed="left")],
        "inner_steps": [Interval(Integral, 1, None, closed="left")],
        "inner_lr": [Interval(Real, 0, None, closed="neither")],
        "inner_alpha": [Interval(Real, 0, None, closed="left")],
        "outer_epochs": [Interval(Integral, 0, None, closed="left")],
        "outer_lr": [Interval(Real, 0, None, closed="neither")],
        "outer_alpha": [Interval(Real, 0, None, closed="left")],
        "outer_batch_size": [Interval(Integral, 1, None, closed="left")],
        "selection": [StrOptions(SELECTIONS)],
        "sigma": [Interval(Real, 0, None, closed="neither")],
        "sigma_final": [None, Interval(Real, 0, None, closed="neither")],
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": [StrOptions(["auto"]), "boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "batch_size": MODEL_CONSTRAINTS["batch_size"],
        "device": MODEL_CONSTRAINTS["device"],
        "precision": MODEL_CONSTRAINTS["precision"],
        "cache": MODEL_CONSTRAINTS["cache"],
        "random_state": ["random_state"],
        "verbose": MODEL_CONSTRAINTS["verbose"],
    }

    def __init__(
        self,
        attention_model="dinov2_vits14",
        embedding_model="dinov2_vits14",
        *,
        attention_weights=None,
        embedding_weights=None,
        n_crops=2,
        image_size=224,
        embedding_size=None,
        head_aggregation="mean",
        hidden_size=6,
        inner_steps=50,
        inner_lr=4.0,
        inner_alpha=1e-3,
        outer_epochs=50,
        outer_lr=0.05,
        outer_alpha=0.1,
        outer_batch_size=64,
        selection="softmax",
        sigma=4.0,
        sigma_final=0.5,
        n_samples=32,
        early_stopping="auto",
        validation_fraction=0.2,
        n_iter_no_change=20,
        batch_size=32,
        device="auto",
        precision="auto",
        cache="memory",
        random_state=None,
        verbose=False,
    ):
        self.attention_model = attention_model
        self.embedding_model = embedding_model
        self.attention_weights = attention_weights
        self.embedding_weights = embedding_weights
        self.n_crops = n_crops
        self.image_size = image_size
        self.embedding_size = embedding_size
        self.head_aggregation = head_aggregation
        self.hidden_size = hidden_size
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.inner_alpha = inner_alpha
        self.outer_epochs = outer_epochs
        self.outer_lr = outer_lr
        self.outer_alpha = outer_alpha
        self.outer_batch_size = outer_batch_size
        self.selection = selection
        self.sigma = sigma
        self.sigma_final = sigma_final
        self.n_samples = n_samples
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.cache = cache
        self.random_state = random_state
        self.verbose = verbose

    _fit_requires_y = True

    # ------------------------------------------------------------------ validation

    def _check_params(self):
        bank = candidate_bank(self.image_size)
        if self.n_crops > len(bank):
            raise ValueError(
                f"n_crops={self.n_crops} is larger than the candidate bank ({len(bank)} crops)"
            )
        return bank

    def _check_targets(self, y, n):
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != n:
            raise ValueError(f"y must be 1-D with one label per image ({n}), got shape {y.shape}")
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        if len(encoder.classes_) < 2:
            raise ValueError(
                f"y has a single class ({encoder.classes_[0]!r}): the adapter learns from a "
                "classifier's held-out loss and needs at least 2 classes"
            )
        return encoder.classes_, encoder.transform(y)

    @staticmethod
    def _check_groups(groups, n, name):
        if groups is None:
            return None
        groups = np.asarray(groups)
        if groups.ndim != 1 or len(groups) != n:
            raise ValueError(
                f"{name} must be 1-D with one group label per image ({n}), got shape "
                f"{groups.shape}"
            )
        return np.unique(groups.astype(str), return_inverse=True)[1]

    def _check_validation(self, X_val, y_val, groups_val, classes):
        """The validation images, their class codes and groups (or Nones without ``X_val``)."""
        if X_val is None:
            if y_val is not None or groups_val is not None:
                raise ValueError("y_val and groups_val need X_val: pass the validation images")
            return None, None, None
        sources = as_sources(X_val)
        if y_val is None:
            raise ValueError("X_val needs y_val: pass the labels of the validation images")
        y_val = np.asarray(y_val)
        if y_val.ndim != 1 or len(y_val) != len(sources):
            raise ValueError(f"y_val must be 1-D with one label per image of X_val "
                             f"({len(sources)}), got shape {y_val.shape}")
        unseen = np.setdiff1d(y_val, classes)
        if len(unseen):
            raise ValueError(f"y_val holds labels absent from y: {unseen[:5].tolist()}; the "
                             f"adapter was given the classes {classes.tolist()}")
        codes = np.searchsorted(classes, y_val)
        return sources, codes, self._check_groups(groups_val, len(sources), "groups_val")

    def _uses_split(self):
        """Whether ``fit`` sets ``validation_fraction`` of ``X`` aside (without ``X_val``)."""
        return not isinstance(self.early_stopping, str) and bool(self.early_stopping)

    def _split(self, codes, cells, rng):
        """(training, validation) indices of the images of ``X``; validation empty without the
        split. Every class needs 2 training images (one is held out while another is fitted)."""
        n = len(codes)
        everything = np.arange(n)
        n_val = int(np.ceil(self.validation_fraction * n)) if self._uses_split() else 0
        strata = codes if cells is None or not n_val else cells
        counts = np.bincount(np.unique(strata, return_inverse=True)[1])
        if np.bincount(codes).min() < 2 or (n_val and (
                counts.min() < 2 or n_val < len(counts) or n - n_val < len(counts))):
            what = "group" if strata is cells else "class"
            split = (f"validation_fraction={self.validation_fraction} gives {n - n_val} "
                     f"training / {n_val} validation images; both parts need every {what}"
                     if n_val else "the outer loss holds images of each class out while the "
                     "head is fitted on others")
            raise ValueError(
                f"too few samples for the held-out part: {n} images with {what} counts "
                f"{counts.tolist()}; {split} (at least 2 images per {what}). Use more images"
                + (", another validation_fraction, X_val=, or early_stopping='auto'"
                   if n_val else "")
            )
        if not n_val:
            return everything, everything[:0]
        return train_test_split(everything, test_size=n_val, stratify=strata, random_state=rng)

    def _check_image_sizes(self, hws, bank, name="X"):
        side = int((bank[:, 2] - bank[:, 0]).max())
        small = np.flatnonzero(hws.min(1) < side)
        if len(small):
            i = int(small[0])
            raise ValueError(
                f"{name}[{i}] is {hws[i, 0]}x{hws[i, 1]} pixels, smaller than the {side}-pixel "
                f"crops of the candidate bank (image_size={self.image_size}); {len(small)} "
                "image(s) are this small. Use larger images or a smaller image_size."
            )

    def _check_sizes_up_front(self, sources, bank, name):
        if isinstance(sources, np.ndarray):  # sizes known before any model work
            self._check_image_sizes(np.tile(sources.shape[1:3], (len(sources), 1)), bank, name)

    # ------------------------------------------------------------------ models

    def _embedding_side(self):
        return self.image_size if self.embedding_size is None else self.embedding_size

    def _cropper(self, cache):
        crop_side = int(round(64 * self.image_size / 224)) or 1
        return AttentionCropper(
            self.attention_model, weights=self.attention_weights, crop_sizes=(crop_side,),
            n_crops=1, image_size=self.image_size, head_aggregation=self.head_aggregation,
            batch_size=self.batch_size, num_workers=0, device=self.device,
            precision=self.precision, cache=cache, verbose=self.verbose,
        ).fit()

    def _maps_and_sizes(self, sources):
        """Attention maps (n, G) float32 and original sizes (n, 2); one attention pass."""
        cropper = self._cropper(self.cache)
        out = cropper.layer_maps(sources)
        maps = out["map"][0]
        return maps.reshape(len(maps), -1), out["image_size"], cropper.grid_size_

    def _embed_bank(self, sources, hws, bank):
        """Every candidate of every image embedded once: (n, 58, d) float32."""
        boxes = to_original(np.broadcast_to(bank, (len(sources), *bank.shape)), hws,
                            self.image_size)
        cs = CropSet(sources, boxes, np.full(boxes.shape[:2], np.nan), hws)
        embedder = CropEmbedder(
            self.embedding_model, weights=self.embedding_weights,
            image_size=self._embedding_side(), batch_size=self.batch_size, num_workers=0,
            device=self.device, precision=self.precision, cache=self.cache,
            verbose=self.verbose,
        )
        return embedder.fit(cs).transform(cs).reshape(len(sources), len(bank), -1)

    def _stored(self, sources, bank, name):
        """Maps, bank embeddings and grid of ``sources``, sizes checked."""
        maps, hws, grid = self._maps_and_sizes(sources)
        self._check_image_sizes(hws, bank, name)
        return maps, self._embed_bank(sources, hws, bank), grid

    # ------------------------------------------------------------------ fit

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, groups=None, *, X_val=None, y_val=None, groups_val=None):
        """Learn the MLP adapter.

        Parameters
        ----------
        X : sequence of image sources, or (n, H, W, 3) uint8 array
        y : array-like of shape (n,)
            Class labels.
        groups : array-like of shape (n,), default=None
            Group of each image (e.g. class × spurious attribute). With groups, the fitting and
            held-out losses weigh every (group, class) cell equally, the validation split is
            stratified by them and scored by worst-group accuracy. Inside a ``Pipeline`` or
            ``GridSearchCV`` it arrives through metadata routing
            (``sklearn.set_config(enable_metadata_routing=True)`` and
            ``set_fit_request(groups=True)``).
        X_val, y_val : image sources and labels, default=None
            A validation set for early stopping and ``validation_scores_``, instead of
            ``validation_fraction`` of ``X``. Never used for the gradient.
        groups_val : array-like of shape (n_val,), default=None
            Groups of ``X_val``: the validation score is then its worst-group accuracy.

        Returns
        -------
        self
        """
        bank = self._check_params()
        sources = as_sources(X)
        classes, codes = self._check_targets(y, len(sources))
        groups = self._check_groups(groups, len(sources), "groups")
        val_sources, val_codes, val_groups = self._check_validation(X_val, y_val, groups_val,
                                                                    classes)
        cells = None if groups is None else groups * len(classes) + codes
        rng = check_random_state(self.random_state)
        if val_sources is None:
            pool, val = self._split(codes, cells, rng)
            val_cells = None if len(val) == 0 else (codes if cells is None else cells)[val]
        else:
            pool, val = np.arange(len(sources)), len(sources) + np.arange(len(val_sources))
            val_cells = val_codes if val_groups is None else val_groups * len(classes) + val_codes
        self._check_sizes_up_front(sources, bank, "X")
        if val_sources is not None:
            self._check_sizes_up_front(val_sources, bank, "X_val")
        maps, emb, grid = self._stored(sources, bank, "X")
        if val_sources is not None:
            vmaps, vemb, _ = self._stored(val_sources, bank, "X_val")
            maps, emb = np.concatenate([maps, vmaps]), np.concatenate([emb, vemb])
            codes = np.concatenate([codes, val_codes])
        weight = None
        if cells is not None:
            weight = np.zeros(len(codes))
            weight[pool] = _balance_weights(cells[pool])
        loop = _OuterLoop(self, maps, emb, codes, weight, pool, val,
                          box_mass_matrix(grid, self.image_size, bank), rng)
        del emb  # the loop keeps the whitened copy
        self._train(loop, val_cells)
        self.grid_size_ = tuple(grid)
        self.candidate_boxes_ = bank
        self.crop_sizes_ = sorted({int(v) for v in bank[:, 2] - bank[:, 0]}, reverse=True)
        self.classes_ = classes
        return self

    def _sigma(self, epoch):
        """Selection temperature of ``epoch`` (0-based): geometric from sigma to sigma_final."""
        if self.sigma_final is None or self.outer_epochs < 2:
            return float(self.sigma)
        return float(self.sigma * (self.sigma_final / self.sigma)
                     ** (epoch / (self.outer_epochs - 1)))

    def _warn_if_degenerate(self, n_train):
        held = _held_out_size(n_train, self.outer_batch_size)
        if held < self.outer_batch_size and self.outer_epochs > 0:
            steps = n_train // held
            warnings.warn(
                f"outer_batch_size={self.outer_batch_size} is more than half of the {n_train} "
                f"training images: held-out batches are cut to {held} images, {steps} outer "
                f"steps per epoch ({steps * self.outer_epochs} Adam steps in all); use "
                f"outer_batch_size <= {max(1, n_train // 4)} (4 steps per epoch), more images "
                "or more outer_epochs",
                DegenerateTrainingWarning,
                stacklevel=5,
            )

    def _train(self, loop, val_cells):
        """The outer loop with validation and early stopping; sets the fitted attributes."""
        self._warn_if_degenerate(len(loop.pool))
        has_val = val_cells is not None
        stops = has_val and (isinstance(self.early_stopping, str) or bool(self.early_stopping))
        curve, scores, steps = [], [], 0
        best_key, best_params, best_epoch, since = None, loop.snapshot(), 0, 0
        if has_val:
            score, vloss = loop.validation(val_cells)
            scores.append(score)
            best_key = (score, -vloss)
        for epoch in range(self.outer_epochs):
            loss, n = loop.epoch(self.outer_batch_size, self._sigma(epoch))
            curve.append(loss)
            steps += n
            line = (f"AttentionAdapter epoch {epoch + 1}/{self.outer_epochs}: held-out loss "
                    f"{loss:.4f}")
            if has_val:
                score, vloss = loop.validation(val_cells)
                scores.append(score)
                line += f", validation score {score:.4f}"
                since += 1
                if (score, -vloss) > best_key:
                    best_key, best_params, best_epoch, since = (score, -vloss), loop.snapshot(), \
                        epoch + 1, 0
            if self.verbose:
                print(line, flush=True)
            if stops and since >= self.n_iter_no_change:
                break
        keep_best = stops
        params = best_params if keep_best else loop.snapshot()
        self.coefs_, self.intercepts_ = [params[0], params[2]], [params[1], params[3]]
        self.loss_curve_ = curve
        self.validation_scores_ = scores if has_val else None
        self.best_validation_score_ = best_key[0] if keep_best else None
        self.best_epoch_ = best_epoch if keep_best else len(curve)
        self.n_iter_ = len(curve)
        self.n_steps_ = steps

    # ------------------------------------------------------------------ transform

    def _fitted_maps(self, sources):
        check_is_fitted(self)
        self._check_params()
        maps, hws, grid = self._maps_and_sizes(sources)
        if tuple(grid) != self.grid_size_:
            raise ValueError(
                f"the attention model now has a {grid} patch grid; the adapter was fitted on "
                f"{self.grid_size_}"
            )
        return maps, hws

    @validated_call
    def attention_maps(self, X):
        """The attention model's maps ``A``: (n, grid_h, grid_w) float32, each summing to 1."""
        maps, _ = self._fitted_maps(as_sources(X))
        return maps.reshape(len(maps), *self.grid_size_)

    @validated_call
    def adapted_maps(self, X):
        """The adapted maps ``Ã``: (n, grid_h, grid_w) float32, each summing to 1."""
        maps, _ = self._fitted_maps(as_sources(X))
        adapted = adapt_maps(maps.astype(np.float64), self.coefs_, self.intercepts_)
        return adapted.reshape(len(maps), *self.grid_size_).astype(np.float32)

    @validated_call
    def transform(self, X):
        """Hard top-k crops under ``Ã``.

        Returns
        -------
        CropSet
            ``boxes`` (n, n_crops, 4) in original-image pixels, in bank order; ``scores``: the
            fraction of the upsampled ``Ã`` inside each box.
        """
        sources = as_sources(X)
        maps, hws = self._fitted_maps(sources)
        self._check_image_sizes(hws, self.candidate_boxes_)
        adapted = adapt_maps(maps.astype(np.float64), self.coefs_, self.intercepts_)
        mass = adapted @ box_mass_matrix(self.grid_size_, self.image_size, self.candidate_boxes_)
        frac = mass[:, :-1] / mass[:, -1:]
        idx = hard_topk(torch.as_tensor(frac), self.n_crops).numpy()
        boxes = to_original(self.candidate_boxes_[idx], hws, self.image_size)
        return CropSet(sources, boxes, np.take_along_axis(frac, idx, 1), hws)

"""AttentionAdapter: a learned correction of the attention map, for when attention looks at the
wrong part of the image (Appendix G of the A² paper).

A small MLP maps each attention map ``A`` (the attention model's patch grid) to an adapted map
``Ã``; crops are then the ``k`` candidates of a fixed bank (:func:`sk_a2.dps.candidate_bank`)
holding the most ``Ã`` mass. The MLP is learned end to end: perturbed top-k
(:mod:`sk_a2.dps`) weighs the candidates' stored embeddings, a logistic-regression head takes a
few gradient steps on one part of the training set, and its cross-entropy on the held-out part is
back-propagated through those steps and the selection into the MLP. See ``docs/adapter.md``.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ._base import MODEL_CONSTRAINTS, ImageModelMixin, ImageTransformerTagsMixin
from ._param_validation import RANDOM_STATE, Interval, StrOptions, validate_params
from .attention import HEAD_AGGREGATIONS
from .cache import MemoryCache
from .cropper import AttentionCropper
from .cropset import CropSet, to_original
from .dps import box_mass_matrix, candidate_bank, hard_topk, perturbed_topk
from .embedder import CropEmbedder
from .images import as_sources
from .device import resolve_device

__all__ = ["AttentionAdapter", "adapt_maps", "selection_scores"]

_LOG_FLOOR = 1e-8


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
    """Scores of the candidates for perturbed top-k: (n, m).

    The log of the fraction of each map's upsampled mass inside each candidate, standardised
    per image (mean 0, standard deviation 1 over the candidates), so ``sigma`` is in units of
    an image's own spread of scores. Ranking equals ranking by mass.

    Parameters
    ----------
    maps : Tensor of shape (n, G)
        Attention maps over the G patches.
    mass_matrix : Tensor of shape (G, m + 1)
        :func:`sk_a2.dps.box_mass_matrix` of the m candidates: column ``c`` gives the mass
        inside candidate ``c``, the last column the mass in the whole frame.

    Returns
    -------
    Tensor of shape (n, m)

    Examples
    --------
    >>> import torch
    >>> from sk_a2.adapter import selection_scores
    >>> from sk_a2.dps import box_mass_matrix
    >>> boxes = [[0, 0, 28, 28], [28, 28, 56, 56]]  # two corners of a 56 px frame
    >>> mass = torch.as_tensor(box_mass_matrix((4, 4), 56, boxes))
    >>> maps = torch.zeros(1, 16, dtype=torch.float64)
    >>> maps[0, 0] = 1.0  # all attention on the top-left patch
    >>> selection_scores(maps, mass).argmax(-1).tolist()
    [0]
    """
    mass = maps @ mass_matrix
    logm = torch.log(mass[:, :-1].clamp_min(1e-30)) - torch.log(mass[:, -1:])
    return (logm - logm.mean(-1, keepdim=True)) / logm.std(-1, keepdim=True).clamp_min(1e-12)


def _inner_fit(z, onehot, steps, lr, alpha):
    """``steps`` gradient steps of L2-penalised softmax regression from zero: (W, b).

    The gradient is written out, so the result stays differentiable in ``z``.
    """
    n, C = onehot.shape
    W = z.new_zeros((z.shape[1], C))
    b = z.new_zeros(C)
    for _ in range(steps):
        g = ((z @ W + b).softmax(-1) - onehot) / n
        W = W - lr * (z.T @ g + alpha * W)
        b = b - lr * g.sum(0)
    return W, b


class AttentionAdapter(
    ImageModelMixin, ImageTransformerTagsMixin, TransformerMixin, BaseEstimator
):
    """Learned attention adapter with differentiable patch selection (A² + adapter).

    Stands where :class:`AttentionCropper` stands: ``fit(X, y)`` learns an MLP that turns the
    attention model's CLS attention ``A`` into ``Ã``; ``transform(X)`` returns a
    :class:`CropSet` with the ``n_crops`` candidates of the fixed bank that hold the most ``Ã``
    mass (hard top-k, in bank order), so :class:`CropEmbedder` and any head follow unchanged.

    The bank (:func:`sk_a2.dps.candidate_bank`): 49 crops of 64 px on a 7 × 7 grid and 9 of
    32 px on a 3 × 3 grid of the 224-pixel frame, scaled with ``image_size``. In ``fit`` every
    candidate of every image is embedded once by the frozen embedding model (through ``cache``
    when given); training then only weighs those stored embeddings.

    Training: the images are split (stratified) into a fitting part and a held-out part
    (``validation_fraction``). Each outer step takes a batch of each; perturbed top-k
    (``sigma``, ``n_samples``) over the candidates' log ``Ã`` mass gives the expected selection
    ``P`` (k × 58 per image); features are ``z = [P E]`` (the selection-weighted embeddings of
    the k slots, concatenated; embeddings standardised on the fitting part); a softmax
    regression takes ``inner_steps`` gradient steps (``inner_lr``, L2 ``inner_alpha``) from
    zero on the fitting batch; its cross-entropy on the held-out batch is minimised over the MLP
    by Adam (``outer_lr``), differentiating through the inner steps and the selection.

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
        Square input side of both models, and the frame of the bank.
    head_aggregation : str, default="mean"
        How the attention heads combine (see :mod:`sk_a2.attention`).
    hidden_size : int, default=6
        Hidden units of the MLP (6 on a 16 × 16 grid: 3,334 parameters).
    inner_steps : int, default=10
        Gradient steps of the inner logistic regression (``T``).
    inner_lr : float, default=2.0
        Step size of the inner steps (features have unit mean squared norm per crop).
    inner_alpha : float, default=1e-3
        L2 penalty of the inner logistic regression.
    outer_epochs : int, default=50
        Passes over the fitting part.
    outer_lr : float, default=0.05
        Adam step size of the MLP.
    outer_batch_size : int, default=512
        Images per outer step, from each of the two parts.
    sigma : float, default=2.0
        Noise scale of perturbed top-k, in units of each image's standard deviation of the
        candidates' log mass (see :func:`selection_scores`).
    n_samples : int, default=32
        Noise draws per image and step.
    validation_fraction : float, default=0.3
        Held-out part of the training set, in (0, 1).
    batch_size : int, default=32
        Model inputs per forward pass of the attention and embedding models.
    device : str, default="auto"
        Device of the models and of training.
    precision : {"auto", "float32", "bfloat16"}, default="auto"
        Numeric precision of the attention and embedding forwards, as in
        :class:`~sk_a2.AttentionCropper` and :class:`~sk_a2.CropEmbedder` (``"auto"``: attention
        in float32, embeddings in bf16 where the device computes it natively; see
        :mod:`sk_a2.precision`). The adapter itself trains in float32.
    cache : None, "memory" or path, default=None
        Cache of attention maps and candidate embeddings (:mod:`sk_a2.cache`); with it, refits
        (``GridSearchCV``) run neither model again.
    random_state : int, RandomState or None, default=None
        Split, MLP initialisation, batches and noise.
    verbose : bool, default=False
        Print the outer (held-out) loss after every epoch.

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
        Mean held-out cross-entropy of each outer epoch.

    Examples
    --------
    >>> from sk_a2 import AttentionAdapter
    >>> from sk_a2.datasets import make_spurious_images
    >>> data = make_spurious_images(n_samples=20, image_size=56, random_state=0)
    >>> adapter = AttentionAdapter("imgfocus_vits14", "imgfocus_vits14", image_size=56,
    ...                            n_crops=1, outer_epochs=1, device="cpu", random_state=0)
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
        "head_aggregation": [StrOptions(HEAD_AGGREGATIONS)],
        "hidden_size": [Interval(Integral, 1, None, closed="left")],
        "inner_steps": [Interval(Integral, 1, None, closed="left")],
        "inner_lr": [Interval(Real, 0, None, closed="neither")],
        "inner_alpha": [Interval(Real, 0, None, closed="left")],
        "outer_epochs": [Interval(Integral, 0, None, closed="left")],
        "outer_lr": [Interval(Real, 0, None, closed="neither")],
        "outer_batch_size": [Interval(Integral, 1, None, closed="left")],
        "sigma": [Interval(Real, 0, None, closed="neither")],
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "batch_size": MODEL_CONSTRAINTS["batch_size"],
        "device": MODEL_CONSTRAINTS["device"],
        "precision": MODEL_CONSTRAINTS["precision"],
        "cache": MODEL_CONSTRAINTS["cache"],
        "random_state": [RANDOM_STATE],
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
        head_aggregation="mean",
        hidden_size=6,
        inner_steps=10,
        inner_lr=2.0,
        inner_alpha=1e-3,
        outer_epochs=50,
        outer_lr=0.05,
        outer_batch_size=512,
        sigma=2.0,
        n_samples=32,
        validation_fraction=0.3,
        batch_size=32,
        device="auto",
        precision="auto",
        cache=None,
        random_state=None,
        verbose=False,
    ):
        self.attention_model = attention_model
        self.embedding_model = embedding_model
        self.attention_weights = attention_weights
        self.embedding_weights = embedding_weights
        self.n_crops = n_crops
        self.image_size = image_size
        self.head_aggregation = head_aggregation
        self.hidden_size = hidden_size
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.inner_alpha = inner_alpha
        self.outer_epochs = outer_epochs
        self.outer_lr = outer_lr
        self.outer_batch_size = outer_batch_size
        self.sigma = sigma
        self.n_samples = n_samples
        self.validation_fraction = validation_fraction
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.cache = cache
        self.random_state = random_state
        self.verbose = verbose

    _fit_requires_y = True

    # ------------------------------------------------------------------ validation

    def _check_params(self):
        validate_params(self)
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
        codes = encoder.transform(y)
        n_classes = len(encoder.classes_)
        if n_classes < 2:
            raise ValueError(
                f"y has a single class ({encoder.classes_[0]!r}): the adapter learns from a "
                "classifier's held-out loss and needs at least 2 classes"
            )
        n_val = int(np.ceil(self.validation_fraction * n))
        counts = np.bincount(codes)
        if counts.min() < 2 or n_val < n_classes or n - n_val < n_classes:
            raise ValueError(
                f"too few samples for the held-out part: {n} images with class counts "
                f"{counts.tolist()} and validation_fraction={self.validation_fraction} give "
                f"{n - n_val} fitting / {n_val} held-out images; both parts need every one of "
                f"the {n_classes} classes (at least 2 images per class)"
            )
        return encoder.classes_, codes

    def _check_image_sizes(self, hws, bank):
        side = int((bank[:, 2] - bank[:, 0]).max())
        small = np.flatnonzero(hws.min(1) < side)
        if len(small):
            i = int(small[0])
            raise ValueError(
                f"X[{i}] is {hws[i, 0]}x{hws[i, 1]} pixels, smaller than the {side}-pixel crops "
                f"of the candidate bank (image_size={self.image_size}); {len(small)} image(s) "
                f"are this small. Use larger images or a smaller image_size."
            )

    # ------------------------------------------------------------------ models

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
        cache = self.cache if self.cache is not None else MemoryCache(2**40)
        cropper = self._cropper(cache)
        hws = cropper.transform(sources).image_sizes
        maps = cropper.attention_maps(sources)
        return maps.reshape(len(maps), -1), hws, cropper.grid_size_

    def _embed_bank(self, sources, hws, bank):
        """Every candidate of every image embedded once: (n, 58, d) float32."""
        boxes = to_original(np.broadcast_to(bank, (len(sources), *bank.shape)), hws,
                            self.image_size)
        cs = CropSet(sources, boxes, np.full(boxes.shape[:2], np.nan), hws)
        embedder = CropEmbedder(
            self.embedding_model, weights=self.embedding_weights, image_size=self.image_size,
            batch_size=self.batch_size, num_workers=0, device=self.device,
            precision=self.precision, cache=self.cache, verbose=self.verbose,
        )
        return embedder.fit(cs).transform(cs).reshape(len(sources), len(bank), -1)

    # ------------------------------------------------------------------ fit

    def fit(self, X, y):
        """Learn the MLP adapter.

        Parameters
        ----------
        X : sequence of image sources, or (n, H, W, 3) uint8 array
        y : array-like of shape (n,)
            Class labels.

        Returns
        -------
        self
        """
        bank = self._check_params()
        sources = as_sources(X)
        classes, codes = self._check_targets(y, len(sources))
        if isinstance(sources, np.ndarray):  # sizes known up front
            self._check_image_sizes(np.tile(sources.shape[1:3], (len(sources), 1)), bank)
        maps, hws, grid = self._maps_and_sizes(sources)
        self._check_image_sizes(hws, bank)
        emb = self._embed_bank(sources, hws, bank)
        rng = check_random_state(self.random_state)
        fit_idx, val_idx = train_test_split(
            np.arange(len(sources)), test_size=self.validation_fraction, stratify=codes,
            random_state=rng,
        )
        mass = box_mass_matrix(grid, self.image_size, bank)
        params, curve = self._train(maps, emb, codes, len(classes), fit_idx, val_idx, mass, rng)
        self.coefs_ = [params[0], params[2]]
        self.intercepts_ = [params[1], params[3]]
        self.grid_size_ = tuple(grid)
        self.candidate_boxes_ = bank
        self.crop_sizes_ = sorted({int(v) for v in bank[:, 2] - bank[:, 0]}, reverse=True)
        self.classes_ = classes
        self.loss_curve_ = curve
        self.n_iter_ = len(curve)
        return self

    def _init_params(self, G, rng):
        h = self.hidden_size
        W1 = rng.normal(0.0, 1.0 / np.sqrt(G), size=(G, h))
        return [W1, np.zeros(h), np.zeros((h, G)), np.zeros(G)]

    def _train(self, maps, emb, codes, n_classes, fit_idx, val_idx, mass, rng):
        """Outer loop: Adam on the MLP; returns its parameters (float32 arrays), loss curve."""
        device = resolve_device(self.device)
        gen = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
        f = emb[fit_idx]
        mean, std = f.mean((0, 1)), f.std((0, 1)) + 1e-6
        del f
        emb -= mean  # in place: the (n, 58, d) array is the one large allocation of fit
        emb /= std * np.sqrt(emb.shape[-1])

        def tensor(a):
            return torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)

        data = {"maps": tensor(maps), "emb": tensor(emb),
                "onehot": tensor(np.eye(n_classes)[codes]), "mass": tensor(mass)}
        params = [tensor(p).requires_grad_() for p in self._init_params(maps.shape[1], rng)]
        opt = torch.optim.Adam(params, lr=self.outer_lr)
        bs = self.outer_batch_size
        curve = []
        for epoch in range(self.outer_epochs):
            fit_order, val_order = rng.permutation(fit_idx), rng.permutation(val_idx)
            losses = []
            for step, start in enumerate(range(0, len(fit_order), bs)):
                fb = fit_order[start:start + bs]
                vb = np.resize(np.roll(val_order, -step * bs), min(bs, len(val_order)))
                opt.zero_grad()
                loss = self._outer_loss(params, data, fb, vb, gen)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            curve.append(float(np.mean(losses)))
            if self.verbose:
                print(f"AttentionAdapter epoch {epoch + 1}/{self.outer_epochs}: "
                      f"held-out loss {curve[-1]:.4f}", flush=True)
        return [p.detach().cpu().numpy().astype(np.float32) for p in params], curve

    def _features(self, params, data, idx, gen):
        """Selection-weighted candidate embeddings of images ``idx``: (len(idx), k·d)."""
        idx = torch.as_tensor(idx, device=data["maps"].device)
        adapted = adapt_maps(data["maps"][idx], params[0::2], params[1::2])
        scores = selection_scores(adapted, data["mass"])
        sel = perturbed_topk(scores, self.n_crops, self.sigma, self.n_samples, generator=gen)
        return torch.einsum("nkc,ncd->nkd", sel, data["emb"][idx]).reshape(len(idx), -1)

    def _outer_loss(self, params, data, fit_batch, val_batch, gen):
        z_fit = self._features(params, data, fit_batch, gen)
        z_val = self._features(params, data, val_batch, gen)
        onehot = data["onehot"]
        W, b = _inner_fit(z_fit, onehot[torch.as_tensor(fit_batch)], self.inner_steps,
                          self.inner_lr, self.inner_alpha)
        target = onehot[torch.as_tensor(val_batch)]
        return -(target * (z_val @ W + b).log_softmax(-1)).sum(-1).mean()

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

    def attention_maps(self, X):
        """The attention model's maps ``A``: (n, grid_h, grid_w) float32, each summing to 1."""
        maps, _ = self._fitted_maps(as_sources(X))
        return maps.reshape(len(maps), *self.grid_size_)

    def adapted_maps(self, X):
        """The adapted maps ``Ã``: (n, grid_h, grid_w) float32, each summing to 1."""
        maps, _ = self._fitted_maps(as_sources(X))
        adapted = adapt_maps(maps.astype(np.float64), self.coefs_, self.intercepts_)
        return adapted.reshape(len(maps), *self.grid_size_).astype(np.float32)

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

"""ZeroShotCLIPClassifier: A²'s zero-shot variant, a CLIP model classifying crops by text."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import log_softmax, logsumexp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d
from sklearn_compat.base import _fit_context

from ._base import MODEL_CONSTRAINTS, ModelEstimatorMixin
from ._param_validation import SequenceOf, StrOptions, validated_call
from .backends import get_backend
from .cropset import CropSet
from .embedder import crop_inputs, embed_boxes
from .images import as_sources
from .models import resolve_model_spec
from .original_crops import CROP_SOURCES
from .precision import at_precision
from .ray_engine import ENGINE_CONSTRAINTS, check_engine, run

__all__ = ["CROP_AGGREGATIONS", "ZeroShotCLIPClassifier"]

#: Accepted values of ``crop_aggregation``.
CROP_AGGREGATIONS = ("mean", "max", "logits_mean")


class ZeroShotCLIPClassifier(ModelEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Zero-shot classification of crops (or images) by a CLIP model and class-name prompts.

    The zero-shot variant of A² (A²_ZS in the paper): each crop of a :class:`~sk_a2.CropSet`
    is embedded by the image tower of an open_clip CLIP model and compared with the text
    embeddings of the class names. Nothing is learned from pixels: :meth:`fit` only records the
    classes of ``y``, pairs them with ``classnames`` and builds the text classifier.

    **Text side**, as open_clip's own ``build_zero_shot_classifier``: every template is filled
    with every class name, tokenised with the model's tokenizer (``open_clip.get_tokenizer(arch)``
    for a named model; open_clip's default tokenizer with the module's context length for a module
    passed in), encoded by the text tower and L2-normalised; the embeddings are averaged over
    templates and normalised again.

    **Image side**: each crop is cut from the image resized to ``image_size × image_size`` and
    resized bilinearly to ``image_size``, exactly as :class:`~sk_a2.CropEmbedder` does, normalised
    with the model's mean and std, encoded by the image tower and L2-normalised
    (``crop_source="original"``: cut from the original pixels, as in ``CropEmbedder``). Plain
    images (not a ``CropSet``) are classified whole, as one crop per image.

    **Logits** of a crop are its cosine similarities with the class embeddings times the model's
    logit scale (the exponential of its learned temperature); their softmax gives the class
    probabilities of the crop.
    With several crops per image, ``crop_aggregation`` combines them:

    * ``"mean"``: the mean over crops of the crop probabilities;
    * ``"max"``: for each class the largest probability over crops, renormalised to sum to 1;
    * ``"logits_mean"``: the softmax of the mean over crops of the logits.

    With one crop per image all three give the softmax of that crop's logits. Both towers run at
    the precision set by ``precision`` (see :mod:`sk_a2.precision`).

    Parameters
    ----------
    model : str or torch.nn.Module, default="openclip_vitl14"
        An open_clip CLIP model: a short name (``"openclip_vitl14"`` is ViT-L-14
        ``laion2b_s32b_b82k``), ``"open_clip:<arch>:<pretrained>"``, or an open_clip CLIP module
        (then a pickle of this estimator contains its weights). Models are loaded and cached by
        :func:`sk_a2.models.load_model`, shared with :class:`~sk_a2.AttentionCropper` and
        :class:`~sk_a2.CropEmbedder`.
    weights : str or path-like, default=None
        Local state-dict file for ``model`` (see :mod:`sk_a2.models`).
    classnames : sequence of str, default=None
        The name of each class, in the order of ``classes_`` (the sorted unique values of ``y``):
        ``classnames[i]`` names ``classes_[i]``. Default: ``str`` of each class.
    templates : sequence of str, default=("a photo of a {}.",)
        Prompt templates; ``"{}"`` is replaced by the class name. A single str is one template.
    crop_aggregation : {"mean", "max", "logits_mean"}, default="mean"
        How the crops of one image combine (see above).
    image_size : int, default=224
        Side of the square model input, and of every resized crop.
    crop_source : {"resized", "original"}, default="resized"
        Cut crops from the image resized to ``image_size`` or from the original pixels (see
        :class:`~sk_a2.CropEmbedder`).
    batch_size : int, default=32
        Model inputs (crops, or prompts) per forward pass.
    num_workers : int or "auto", default="auto"
        Threads decoding and resizing images, up to two batches ahead of the model, started
        once per process and kept; ``"auto"``: ``min(8, CPU cores)`` on CUDA, 1 on CPU; 0
        decodes in the calling thread.
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    precision : {"auto", "float32", "bfloat16"}, default="auto"
        Numeric precision of the forwards (image and text towers). ``"auto"``: a bf16 copy of
        the model on CUDA and on a CPU with native bf16 (AVX-512 BF16, AMX), float32 on other
        CPUs. See :mod:`sk_a2.precision`.
    cache : None, "memory" or path, default=None
        Keep image embeddings keyed by (image content, box, model, image size, crop source,
        precision), shared with :class:`~sk_a2.CropEmbedder` for the same model. See :mod:`sk_a2.cache`.
    engine : None or "ray", default=None
        ``"ray"``: the image forwards run on a Ray cluster (``docs/ray.md``).
    engine_options : dict, default=None
        Ray engine settings for the image forwards (:data:`sk_a2.ray_engine.ENGINE_OPTIONS`).
    verbose : bool, default=False
        Show a progress bar over images.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The classes seen in ``y``, sorted.
    classnames_ : list of str
        The name used for each class, aligned with ``classes_``.
    templates_ : tuple of str
        The prompt templates.
    weights_digest_ : str or None
        Digest of the ``weights`` file's bytes at ``fit`` time (``None`` without a file). A
        fitted (or unpickled) estimator refuses to run once the file's content differs.

    Notes
    -----
    The text embeddings live in a private attribute that pickling drops; they are rebuilt on
    the first prediction after unpickling, so a pickled estimator holds no tensors or weights
    (unless ``model`` is a module). Under cross-validation every training fold must contain every
    class, since ``classnames`` must name exactly the classes of ``y``.

    Examples
    --------
    A tiny randomly initialised open_clip model stands in for ``openclip_vitl14`` here (its
    predictions are meaningless, the data flow is the real one):

    >>> import torch
    >>> from open_clip.model import CLIP
    >>> from sklearn.pipeline import Pipeline
    >>> from sk_a2 import AttentionCropper, ZeroShotCLIPClassifier
    >>> from sk_a2.datasets import make_spurious_images
    >>> _ = torch.manual_seed(0)
    >>> clip = CLIP(embed_dim=32,
    ...             vision_cfg={"image_size": 64, "layers": 2, "width": 64, "patch_size": 16,
    ...                         "head_width": 32},
    ...             text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32,
    ...                       "heads": 2, "layers": 1}).eval()
    >>> data = make_spurious_images(n_samples=10, image_size=56, random_state=0)
    >>> pipe = Pipeline([
    ...     ("crop", AttentionCropper("imgfocus_vits14", crop_sizes=(28,), image_size=56,
    ...                               device="cpu")),
    ...     ("zs", ZeroShotCLIPClassifier(clip, classnames=["disk", "square"], image_size=64,
    ...                                   device="cpu")),
    ... ])
    >>> proba = pipe.fit(data.images[:4], data.target[:4]).predict_proba(data.images[:4])
    >>> proba.shape, bool(abs(proba.sum(1) - 1).max() < 1e-5)
    ((4, 2), True)
    """

    def __init__(
        self,
        model="openclip_vitl14",
        *,
        weights=None,
        classnames=None,
        templates=("a photo of a {}.",),
        crop_aggregation="mean",
        image_size=224,
        crop_source="resized",
        batch_size=32,
        num_workers="auto",
        device="auto",
        precision="auto",
        cache=None,
        verbose=False,
        engine=None,
        engine_options=None,
    ):
        super().__init__(model, weights=weights, image_size=image_size, batch_size=batch_size,
                         num_workers=num_workers, device=device, precision=precision, cache=cache,
                         verbose=verbose, engine=engine, engine_options=engine_options)
        self.classnames = classnames
        self.templates = templates
        self.crop_aggregation = crop_aggregation
        self.crop_source = crop_source

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_text_cache", None)
        return state

    # ------------------------------------------------------------------ validation and loading

    _parameter_constraints = {
        **MODEL_CONSTRAINTS,
        **ENGINE_CONSTRAINTS,
        "classnames": [SequenceOf(lambda c: isinstance(c, str), "a sequence of str (one per class)",
                                  allow_empty=True), None],
        "templates": [str, SequenceOf(lambda t: isinstance(t, str), "a sequence of str",
                                      allow_empty=True)],
        "crop_aggregation": [StrOptions(CROP_AGGREGATIONS)],
        "crop_source": [StrOptions(CROP_SOURCES)],
    }

    def _validate(self):
        """The rules across parameters (each parameter's own rule: ``_parameter_constraints``)."""
        self._check_precision()
        check_engine(self.engine, self.engine_options)

    def _load(self):
        if isinstance(self.model, str) and not _has_text_tower(self.model):
            raise ValueError(
                f"ZeroShotCLIPClassifier needs an open_clip CLIP model (image and text towers); "
                f"{self.model!r} is a vision-only model. Use e.g. 'openclip_vitl14' or "
                "'open_clip:<arch>:<pretrained>'."
            )
        vm = super()._load()
        if not vm.backend.has_text_tower or not vm.encodes_text:
            raise ValueError(
                f"ZeroShotCLIPClassifier needs an open_clip CLIP model (image and text towers); "
                f"the model passed in ({vm.name}) is a {vm.library} vision model"
            )
        return vm

    # ------------------------------------------------------------------ text side

    @torch.no_grad()
    def _class_embeddings(self, vm, classnames, templates):
        texts = [t.format(c) for c in classnames for t in templates]
        chunks = []
        with at_precision(vm, self._precision("embedding")) as model:
            encode = model.text_encoder()
            for i in range(0, len(texts), self.batch_size):
                chunks.append(F.normalize(encode(texts[i:i + self.batch_size]).float(), dim=-1))
        emb = torch.cat(chunks).reshape(len(classnames), len(templates), -1)
        return F.normalize(emb.mean(1), dim=-1)

    def _text_embeddings(self, vm):
        """Class embeddings (n_classes, d) on the model's device, built once per loaded model."""
        cache = getattr(self, "_text_cache", None)
        if cache is None or cache[0] is not vm:
            cache = (vm, self._class_embeddings(vm, self.classnames_, self.templates_))
            self._text_cache = cache
        return cache[1]

    # ------------------------------------------------------------------ fit

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Record the classes of ``y``, name them and build the text classifier.

        Nothing is learned from the pixels of ``X``.

        Parameters
        ----------
        X : CropSet, or image sources
            Only its length is checked against ``y``.
        y : array-like of shape (n,)
            Class labels; one class is allowed.

        Returns
        -------
        self
        """
        self._validate()
        if y is None:
            raise ValueError("ZeroShotCLIPClassifier.fit needs y: its classes are the labels")
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        n = len(X) if isinstance(X, CropSet) else len(as_sources(X))
        if n != len(y):
            raise ValueError(f"X has {n} images but y has {len(y)} labels")
        classes = np.unique(y)
        classnames = _check_classnames(self.classnames, classes)
        templates = _check_templates(self.templates)
        vm = self._fit_model()
        self._text_cache = (vm, self._class_embeddings(vm, classnames, templates))
        self.classes_ = classes
        self.classnames_ = classnames
        self.templates_ = templates
        return self

    # ------------------------------------------------------------------ prediction

    @torch.no_grad()
    def _crop_logits(self, X):
        """Logits of every crop: (n, n_inputs_per_image, n_classes), float32."""
        if isinstance(X, CropSet):
            if len(X) == 0:
                raise ValueError("X is an empty CropSet: at least one image is needed")
        else:
            X = as_sources(X)
        decode_size = self.image_size if self.crop_source == "resized" else None
        emb = run(self, X, in_process=lambda X: {"out": self._crop_embeddings(X)},
                  decode_size=decode_size)["out"]
        vm = self._load()
        text = self._text_embeddings(vm).cpu()
        emb = F.normalize(torch.from_numpy(emb), dim=-1)
        return (vm.similarity_scale().float().cpu() * emb @ text.T).numpy()

    def transform_batch(self, X):
        """The image embeddings of every crop of one batch, in this process, whatever
        ``engine`` says.

        The unit of work of the Ray engine's actors (see ``docs/ray.md``); the classifier's
        scores are these embeddings against the class texts' embeddings. With
        ``crop_source="resized"``, ``X`` may also hold images decoded and resized to
        ``image_size`` ahead of the model (:class:`sk_a2.images.Decoded`).

        Returns
        -------
        ndarray of shape (n, n_inputs_per_image, d), float32
            Not normalised.
        """
        check_is_fitted(self)
        self._validate()
        return self._crop_embeddings(X)

    def _crop_embeddings(self, X):
        """Image embeddings of every crop: (n, n_inputs_per_image, d), float32."""
        sources = X.images if isinstance(X, CropSet) else as_sources(X)
        boxes, originals = crop_inputs(X, self.image_size, False, self.crop_source)
        return embed_boxes(
            self._load(), sources, boxes, size=self.image_size, batch_size=self.batch_size,
            num_workers=self.num_workers, verbose=self.verbose, desc="zero-shot",
            originals=originals, precision=self._precision("embedding"), **self._cache_args(),
        )

    def _scores(self, X):
        """Aggregated ``(decision, log_proba)``, both (n, n_classes), float64."""
        check_is_fitted(self)
        self._validate()
        logits = self._crop_logits(X).astype(np.float64)
        if self.crop_aggregation == "logits_mean":
            decision = logits.mean(1)
            return decision, log_softmax(decision, axis=-1)
        log_p = log_softmax(logits, axis=-1)
        if self.crop_aggregation == "mean":
            log_p = logsumexp(log_p, axis=1) - np.log(log_p.shape[1])
        else:
            log_p = log_p.max(1)
            log_p = log_p - logsumexp(log_p, axis=-1, keepdims=True)
        return log_p, log_p

    @validated_call
    def decision_function(self, X):
        """Aggregated class scores.

        With ``crop_aggregation="logits_mean"`` the mean logits over crops; otherwise the log of
        the aggregated probabilities (so ``predict_proba`` is always the softmax of these scores).

        Parameters
        ----------
        X : CropSet, or image sources

        Returns
        -------
        ndarray of shape (n,) for two classes, else (n, n_classes), float64
            For two classes, the score of ``classes_[1]`` minus that of ``classes_[0]``, as in
            scikit-learn's linear classifiers.
        """
        decision, _ = self._scores(X)
        if decision.shape[1] == 2:
            return decision[:, 1] - decision[:, 0]
        return decision

    @validated_call
    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`.

        Returns
        -------
        ndarray of shape (n, n_classes), float64
        """
        return self._scores(X)[1]

    @validated_call
    def predict_proba(self, X):
        """Class probabilities of each image, crops combined by ``crop_aggregation``.

        Parameters
        ----------
        X : CropSet, or image sources

        Returns
        -------
        ndarray of shape (n, n_classes), float64
            Columns ordered as ``classes_``; rows sum to 1.
        """
        return np.exp(self.predict_log_proba(X))

    @validated_call
    def predict(self, X):
        """The most probable class of each image.

        Returns
        -------
        ndarray of shape (n,)
        """
        log_proba = self.predict_log_proba(X)
        return self.classes_[np.argmax(log_proba, axis=1)]


def _has_text_tower(model: str) -> bool:
    return get_backend(resolve_model_spec(model).library).has_text_tower


def _check_classnames(classnames, classes) -> list[str]:
    if classnames is None:
        return [str(c) for c in classes]
    if isinstance(classnames, str):
        raise TypeError(
            f"classnames must be a sequence of str (one per class), got the str {classnames!r}"
        )
    try:
        names = list(classnames)
    except TypeError:
        raise TypeError(
            f"classnames must be a sequence of str, got {type(classnames).__name__}"
        ) from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"classnames must hold str, got {bad[0]!r} ({type(bad[0]).__name__})")
    if len(names) != len(classes):
        raise ValueError(
            f"classnames has {len(names)} names but y has {len(classes)} classes "
            f"({', '.join(map(str, classes))}); give one name per class, in the order of the "
            "sorted classes"
        )
    return [str(n) for n in names]


def _check_templates(templates) -> tuple[str, ...]:
    if isinstance(templates, str):
        templates = (templates,)
    try:
        templates = tuple(templates)
    except TypeError:
        raise TypeError(
            f"templates must be a sequence of str, got {type(templates).__name__}"
        ) from None
    if not templates:
        raise ValueError("templates is empty: at least one prompt template is needed")
    for t in templates:
        if not isinstance(t, str) or "{}" not in t:
            raise ValueError(
                f'every template must be a str containing "{{}}" (the class name\'s place), '
                f"got {t!r}"
            )
        try:
            t.format("x")
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(f"template {t!r} cannot be filled with a class name: {exc}") from exc
    return tuple(str(t) for t in templates)

"""`load()` and the `VLM` wrapper: a Hugging Face model + processor + its family adapter."""
from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from gazekit.models.adapters import Adapter, ImageCells, adapter_class_for
from gazekit.regions import Scene, Strip

ImageLike = Union[Strip, Scene, Image.Image]
_FEW_TOKENS = 2  # a region with this many image tokens or fewer gets a warning


def default_device() -> torch.device:
    """Where `gazekit.load(path)` puts a model: CUDA when available, else Apple MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _as_scene(image: ImageLike) -> Scene:
    if isinstance(image, Scene):
        return image
    if isinstance(image, Image.Image):
        W, H = image.size
        return Scene(image, {"image": (0, 0, W, H)})
    raise TypeError(f"expected a gazekit Strip, Scene or PIL image, got {type(image).__name__}")


class LayoutMismatch(ValueError):
    """Images prepared as one batch do not share one token layout (length, or which tokens are each region's)."""


class Prepared(Mapping):
    """Model inputs for one or more (image, prompt) pairs with the same token layout.

    Use it as `model(**prepared)`. `.regions[r]` holds the sequence positions of region r's image tokens (region
    order = panels left to right, or the Scene's box order); `.cells` all image tokens with their centres."""

    def __init__(self, inputs, regions, cells, scenes, prompts, adapter):
        self._inputs = dict(inputs)
        self.regions: list[torch.Tensor] = regions
        self.cells: ImageCells = cells
        self.scenes = scenes
        self.prompts = prompts
        self._adapter = adapter

    def __getitem__(self, k):
        v = self._inputs[k]
        if k == "input_ids":
            # a fresh alias of the ids that carries this Prepared, so a raw `vlm.model(**prepared)` forward is
            # bound to it (`owning`) — even for a temporary `model(**vlm.prepare(...))` — without a registry: the
            # alias lives as long as the call holds it, and no cycle keeps the inputs alive afterwards
            v = v.view_as(v)
            v._gazekit_prepared = self
        return v

    @staticmethod
    def owning(input_ids) -> Optional["Prepared"]:
        """The `Prepared` whose `prepared["input_ids"]` `input_ids` is (that very tensor object), or None.

        This is how a raw `vlm.model(**prepared)` call is bound to its prepared input: by the tensor it was handed,
        so no "last prepared input" has to be remembered. (`model.generate` copies its inputs: use
        `vlm.generate(prepared)`, which binds explicitly.)

        Args:
            input_ids: a tensor handed to the model's forward (or None)."""
        return getattr(input_ids, "_gazekit_prepared", None) if input_ids is not None else None

    def __iter__(self):
        return iter(self._inputs)

    def __len__(self):
        return len(self._inputs)

    @property
    def input_ids(self) -> torch.Tensor:
        """The prompt's token ids [batch, tokens]."""
        return self._inputs["input_ids"]

    @property
    def prompt_len(self) -> int:
        """Tokens in the (padded) prompt."""
        return int(self._inputs["input_ids"].shape[1])

    @property
    def image_positions(self) -> torch.Tensor:
        """Positions of all image tokens in the prompt."""
        return self.cells.positions

    def positions_for_box(self, box) -> torch.Tensor:
        """Image-token positions whose cell centre lies in `box` (x0, y0, x1, y1) in image pixels."""
        scene = self.scenes[0]
        W, H = scene.image.size
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
            raise ValueError(f"box {tuple(box)} lies outside the {W}x{H} image; give (x0, y0, x1, y1) inside it")
        c = self.cells.centres
        inside = (c[:, 0] >= x0) & (c[:, 0] < x1) & (c[:, 1] >= y0) & (c[:, 1] < y1)
        if not inside.any():
            raise ValueError(f"box {tuple(box)} covers no image-token centre (tokens are "
                             f"{_cell_size_hint(self.cells, W, H)}); make the box larger")
        return self.cells.positions[torch.from_numpy(inside)]

    def to(self, device, dtype=None):
        """Move the tensors to `device` (floating ones also to `dtype` when given), in place; returns self."""
        for k, v in self._inputs.items():
            if torch.is_tensor(v):
                if dtype is not None and torch.is_floating_point(v):
                    v = v.to(dtype)
                self._inputs[k] = v.to(device)
        return self


def _pitch(values: np.ndarray) -> float:
    u = np.unique(np.round(values, 3))
    d = np.diff(u)
    d = d[d > 1e-6]
    return float(d.min()) if d.size else float("nan")


def _cell_size_hint(cells: ImageCells, W, H) -> str:
    """What one image token covers, measured from the token centres themselves: right also where the adapter padded
    the image (LLaVA pads a wide strip to a square, so its tokens are larger than image area / token count)."""
    c = cells.centres
    on_image = int(((c[:, 0] >= 0) & (c[:, 0] < W) & (c[:, 1] >= 0) & (c[:, 1] < H)).sum())
    pw, ph = _pitch(c[:, 0]), _pitch(c[:, 1])
    if not np.isfinite(pw):
        pw = W
    if not np.isfinite(ph):
        ph = H
    return f"{on_image} tokens fall on the {W}x{H} image, each a cell of about {pw:.0f}x{ph:.0f} px"


@dataclass
class VLM:
    """A loaded vision-language model with everything gazekit needs to know about its family.

    Attributes: `model`, `processor`, `family`, `n_layers`, `n_heads` (query heads per layer), `recommended_k`
    (stored K for the embedded model, else None), `name`."""

    model: Any
    processor: Any
    adapter: Adapter = field(repr=False)
    name: str = "model"
    recommended_k: Optional[int] = None
    meta: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._stack: list = []

    # Interventions live with the *model*, not the wrapper: two VLM wrappers of one model (e.g. a notebook that
    # called gazekit.load(model, processor) twice) share one attention session, so a steer opened through one
    # wrapper keeps acting while the other runs inputs.
    @property
    def _shared(self) -> "_ModelState":
        return _model_state(self.model)

    @property
    def _session(self):
        return self._shared.session

    @_session.setter
    def _session(self, value):
        self._shared.session = value

    # -- facts -----------------------------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        """The adapter's family name (e.g. "qwen2_vl", "llava", "idefics3")."""
        return self.adapter.family

    @property
    def n_layers(self) -> int:
        """Layers of the language model."""
        return self.adapter.n_layers

    @property
    def n_heads(self) -> int:
        """Attention (query) heads per language-model layer."""
        return self.adapter.n_heads

    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's first floating-point parameter (float32 if none)."""
        for p in self.model.parameters():
            if torch.is_floating_point(p):
                return p.dtype
        return torch.float32

    @property
    def tokenizer(self):
        """The processor's tokenizer (or the processor itself when it is one)."""
        return getattr(self.processor, "tokenizer", self.processor)

    def __repr__(self):
        return (f"VLM({self.name!r}, family={self.family!r}, layers={self.n_layers}, heads={self.n_heads}, "
                f"device={self.device}, dtype={self.dtype})")

    # -- inputs ----------------------------------------------------------------------------------------------------
    def prepare(self, image: ImageLike, prompt: str) -> Prepared:
        """Chat-templated inputs (with the generation prompt) + region token positions, on the model's device."""
        return self.prepare_batch([image], [prompt])

    def prepare_batch(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> Prepared:
        """Several (image, prompt) pairs in one batch. They must share one token layout (same prompt length and
        image-token positions), e.g. several strips with one question on the embedded comic model."""
        if len(images) == 0:
            raise ValueError("prepare_batch needs at least one image")
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        scenes = [_as_scene(im) for im in images]
        fed, offsets, seen = [], [], {}
        for s in scenes:  # an image repeated in the batch (one strip, several targets) is preprocessed once
            if id(s.image) not in seen:
                seen[id(s.image)] = self.adapter.preprocess_image(s.image)
            img, off = seen[id(s.image)]
            fed.append(img)
            offsets.append(off)
        inputs = self.adapter.build_inputs(fed, list(prompts), scenes)
        if "attention_mask" in inputs and not bool(inputs["attention_mask"].all()):
            raise LayoutMismatch("prepare_batch needs inputs of one length (no padding); prepare them one at a time")
        # rows with the same scene and prompt have the same inputs, so their token layout is checked once
        first = {}
        for r, (s, p) in enumerate(zip(scenes, prompts)):
            first.setdefault((id(s), p), r)
        rows = sorted(first.values())
        cells = {r: self.adapter.image_cells(inputs, r, scenes[r], fed[r].size, offsets[r]) for r in rows}
        regions = self._regions(cells[0], scenes[0])
        for r in rows[1:]:
            other = self._regions(cells[r], scenes[r])
            if len(other) != len(regions) or any(not torch.equal(a, b) for a, b in zip(other, regions)):
                raise LayoutMismatch("images in one batch map their regions to different tokens; prepare them "
                                     "separately")
        prep = Prepared(inputs, regions, cells[0], scenes, list(prompts), self.adapter)
        prep.to(self.device, self.dtype)
        return prep

    def _regions(self, cells: ImageCells, scene: Scene) -> list[torch.Tensor]:
        out = []
        c = cells.centres
        for i, (x0, y0, x1, y1) in enumerate(scene.token_boxes):
            inside = (c[:, 0] >= x0) & (c[:, 0] < x1) & (c[:, 1] >= y0) & (c[:, 1] < y1)
            if not inside.any():
                W, H = scene.image.size
                raise ValueError(f"region {scene.names[i]!r} box {(x0, y0, x1, y1)} covers no image-token centre "
                                 f"({_cell_size_hint(cells, W, H)}); make the box larger")
            n = int(inside.sum())
            if n <= _FEW_TOKENS:
                W, H = scene.image.size
                warnings.warn(f"region {scene.names[i]!r} gets only {n} image token(s) "
                              f"({_cell_size_hint(cells, W, H)}): its attention share and steering rest on {n} "
                              "token(s); use larger panels or a higher-resolution image (a model with more image "
                              "tokens per pixel)", UserWarning, stacklevel=4)
            out.append(cells.positions[torch.from_numpy(inside)])
        return out

    # -- generation ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def ask(self, image: ImageLike, prompt: str, max_new_tokens: int = 20, **generate_kwargs) -> str:
        """Greedy answer to one (image, prompt)."""
        return self.ask_batch([image], [prompt], max_new_tokens=max_new_tokens, **generate_kwargs)[0]

    @torch.no_grad()
    def ask_batch(self, images, prompts, max_new_tokens: int = 20, **generate_kwargs) -> list[str]:
        """Answer several (image, prompt) pairs in one padded batch; returns one stripped answer per pair."""
        prep = self.prepare_batch(images, prompts)
        out = self.generate(prep, max_new_tokens=max_new_tokens, **generate_kwargs)
        return self.decode(out[:, prep.prompt_len:])

    @torch.no_grad()
    def generate(self, prepared: Prepared, max_new_tokens: int = 20, **generate_kwargs) -> torch.Tensor:
        """Greedy `model.generate` on `prepared`, bound to it for the active interventions.

        Args:
            prepared: from `prepare` / `prepare_batch`.
            max_new_tokens: generation length cap.
            **generate_kwargs: passed to `model.generate` (they override the greedy defaults).

        Returns:
            the token ids [batch, prompt + new tokens]."""
        kw = dict(do_sample=False, max_new_tokens=max_new_tokens)
        tok = self.tokenizer
        if getattr(tok, "pad_token_id", None) is not None:
            kw["pad_token_id"] = tok.pad_token_id
        kw.update(generate_kwargs)
        with self._binding(prepared):
            return self.model.generate(**prepared, **kw)

    def forward(self, prepared: Prepared, inputs: Optional[Mapping] = None, **kwargs):
        """One forward of the model on `prepared` — `model(**prepared, **kwargs)` — with the forward bound to it.

        Interventions resolve their regions and targets against the input each forward is bound to (steering
        toward panel 3 needs to know which tokens are panel 3). `inputs` runs a forward on other model inputs
        derived from `prepared` (e.g. a suffix of its prompt on a KV cache), still bound to `prepared`.

        Args:
            prepared: from `prepare` / `prepare_batch`.
            inputs: model inputs to run instead of `prepared`'s own (None: `prepared`'s).
            **kwargs: passed to the model (e.g. `use_cache=False`, `output_attentions=True`).

        Returns:
            the model's output."""
        with self._binding(prepared):
            return self.model(**(prepared if inputs is None else inputs), **kwargs)

    def decode(self, ids) -> list[str]:
        """Token ids -> stripped strings, special tokens dropped (one per row)."""
        return [s.strip() for s in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    # -- interventions ---------------------------------------------------------------------------------------------
    @property
    def interventions(self) -> tuple:
        """The interventions active on this model (through any wrapper of it), outermost first."""
        session = self._session
        return tuple(session.interventions) if session is not None else ()

    @contextlib.contextmanager
    def intervene(self, *interventions):
        """Attach `interventions` (see `gazekit.intervene`) for the block; detach them on exit, also on exceptions.

        The attention function is installed while at least one intervention is attached, and the previous attention
        implementation restored when the last one leaves.

        Args:
            *interventions: objects implementing some of `gazekit.Intervention`'s hooks.

        Yields:
            the interventions, as a tuple."""
        from gazekit.attention import Session
        from gazekit.intervene import check_interventions

        check_interventions(interventions)
        if self._session is None:
            session = Session(self)
            session.install()
            self._session = session
        session = self._session
        attached = []
        try:
            for item in interventions:
                session.attach(item)
                attached.append(item)
            yield interventions
        finally:
            for item in reversed(attached):
                session.detach(item)
            if not session.interventions:
                self._session = None
                session.uninstall()

    @contextlib.contextmanager
    def _binding(self, prepared):
        """Bind `prepared` to the forwards run inside the block, for the active interventions (if any)."""
        session = self._session
        if session is None:
            yield
            return
        with session.bind(prepared):
            yield


@dataclass
class _ModelState:
    session: Any = None


_MODEL_STATES: "weakref.WeakKeyDictionary[Any, _ModelState]" = weakref.WeakKeyDictionary()


def _model_state(model) -> _ModelState:
    state = _MODEL_STATES.get(model)
    if state is None:
        state = _MODEL_STATES[model] = _ModelState()
    return state


# What `load()` without a model returns: installed by the package that ships the default model (gazekit's own
# __init__ imports it), so this module needs to know nothing about that model.
_default_model: Optional[Callable[..., "VLM"]] = None


def set_default_model(loader: Callable[..., "VLM"]) -> None:
    """Make `loader` what `gazekit.load()` (no model given) calls.

    Args:
        loader: a function `loader(quantize=None | "4bit", dtype=None | str | torch.dtype) -> VLM`."""
    global _default_model
    _default_model = loader


# Models loadable by a short name (e.g. a comic model shipped inside gazekit): installed by the package that ships
# them, as the default model is, so this module knows no model by name.
_named_models: dict[str, Callable[..., "VLM"]] = {}


def register_model_name(name: str, loader: Callable[..., "VLM"]) -> None:
    """Make `gazekit.load(name)` call `loader` (before any lookup of `name` as a folder or hub id).

    Args:
        name: the short name (e.g. "my-comic-model"); choose one that is no hub id ("owner/model").
        loader: a function `loader(quantize=None | "4bit", dtype=None | str | torch.dtype) -> VLM`."""
    if "/" in name:
        raise ValueError(f"model names may not contain '/', which hub ids use: got {name!r}")
    _named_models[name] = loader


def model_names() -> list[str]:
    """The short names `gazekit.load` accepts besides folders and hub ids, sorted."""
    return sorted(_named_models)


def load(model=None, processor=None, *, quantize: Optional[str] = None, device_map=None,
         dtype: Optional[Union[str, torch.dtype]] = None, trust_remote_code: bool = False) -> VLM:
    """Load a VLM for gaze-head work.

    - `load()` — the small comic model embedded in gazekit (seconds; on the GPU when CUDA is available, else the CPU).
    - `load(name)` for a name in `model_names()` (the models gazekit ships inside the package) — that model.
    - `load("Qwen/Qwen2-VL-2B-Instruct")` or a local folder — `from_pretrained`; `dtype` defaults to bfloat16 on
      CUDA, float16 on Apple MPS, float32 on CPU; `quantize="4bit"` loads NF4 weights with bitsandbytes (the
      family's `full_precision_modules` — vision tower, projector, lm_head — kept in full precision);
      `device_map="auto"` shards across GPUs with accelerate.
    - `load(model, processor)` — an already loaded Hugging Face model and its processor.

    Args:
        model: None, a registered name (`model_names()`), a model id or folder, or a loaded Hugging Face model.
        processor: the model's processor (required with a loaded model; optional with an id or folder, where
            `AutoProcessor` builds it).
        quantize: None, or "4bit" for NF4 weights (bitsandbytes).
        device_map: passed to `from_pretrained` (e.g. "auto").
        dtype: the weights' dtype (a torch dtype or its name); default by device, as above.
        trust_remote_code: passed to `from_pretrained`; never on by default.

    Returns:
        the `VLM`.

    Raises:
        UnsupportedModelError: no adapter serves the model (raised before any weights are downloaded)."""
    if quantize not in (None, "4bit"):
        raise ValueError(f"quantize must be None or '4bit', got {quantize!r}")
    if model is None:
        if _default_model is None:  # pragma: no cover - gazekit's __init__ installs it
            raise RuntimeError("no default model is installed: pass a model id or folder, or (model, processor)")
        return _default_model(quantize=quantize, dtype=dtype)
    if isinstance(model, str) and model in _named_models:
        if processor is not None or device_map is not None or trust_remote_code:
            raise ValueError(f"gazekit.load({model!r}) loads a built-in model with its own processor: pass only "
                             "quantize= and dtype=")
        return _named_models[model](quantize=quantize, dtype=dtype)
    if isinstance(model, (str, Path)):
        return _load_pretrained(str(model), processor, quantize, device_map, dtype, trust_remote_code)
    if processor is None:
        raise ValueError("pass the model's processor too: gazekit.load(model, processor)")
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"gazekit.load(model, processor) expects a Hugging Face transformers model (with a .config), "
                        f"got {type(model).__name__}")
    adapter_cls = adapter_class_for(config, processor)
    adapter_cls.check_processor(processor)
    if model.training:  # kept as it is: load() must not change the caller's model (issue 26)
        warnings.warn("the model is in training mode (dropout active), so answers and attention are random: call "
                      "model.eval() before gazekit.load(model, processor); gazekit leaves the mode as you set it",
                      UserWarning, stacklevel=2)
    name = getattr(config, "_name_or_path", "") or type(model).__name__
    return VLM(model, processor, adapter_cls(model, processor), name=name)


def resolve_dtype(dtype, device: torch.device):
    """The dtype to load weights in: `dtype` itself when given, else bfloat16 (or float16) on CUDA, float16 on
    Apple MPS, float32 on the CPU.

    Args:
        dtype: None, a torch dtype, or its name ("float16").
        device: the device the model will run on."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is not None:
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def four_bit_config(adapter_cls: type[Adapter], compute_dtype):
    """The bitsandbytes NF4 config every gazekit 4-bit load uses: the family's `full_precision_modules` (vision
    tower, projector, output head) stay in full precision, the text model's linear layers are quantised.

    Args:
        adapter_cls: the model's adapter class (`adapter_class_for(config, processor)`).
        compute_dtype: the dtype 4-bit layers compute in.

    Returns:
        a `transformers.BitsAndBytesConfig`."""
    from transformers import BitsAndBytesConfig

    from gazekit.models._compat import quiet_bitsandbytes_cpu_kernel_warning
    quiet_bitsandbytes_cpu_kernel_warning()

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=list(adapter_cls.full_precision_modules))


_PROCESSOR_HINT = ("build the model's processor class yourself and pass it: gazekit.load(path, processor). Qwen-VL and "
                   "SmolVLM processors also construct a video processor that needs torchvision; without torchvision "
                   "AutoProcessor returns only the tokenizer or fails")


def _auto_processor(path, trust_remote_code):
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ImportError, ValueError, OSError) as e:
        raise ValueError(f"could not build the processor of {path!r} ({e}); {_PROCESSOR_HINT}") from e
    if not hasattr(processor, "image_processor"):
        raise ValueError(f"AutoProcessor for {path!r} returned {type(processor).__name__} without an image processor; "
                         + _PROCESSOR_HINT)
    return processor


def _load_pretrained(path, processor, quantize, device_map, dtype, trust_remote_code) -> VLM:
    from transformers import AutoConfig, AutoModelForImageTextToText

    cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    adapter_class_for(cfg, processor)  # refuses an unsupported model before anything else is downloaded
    # the processor before the weights: one that cannot be built fails in seconds, not after a multi-GB download
    if processor is None:
        processor = _auto_processor(path, trust_remote_code)
    adapter_cls = adapter_class_for(cfg, processor)
    adapter_cls.check_processor(processor)
    device = default_device()
    dtype = resolve_dtype(dtype, device)
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code)
    if quantize == "4bit":
        kwargs["quantization_config"] = four_bit_config(adapter_cls, dtype)
        kwargs["device_map"] = device_map or ("auto" if device.type == "cuda" else str(device))
    elif device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    return VLM(model, processor, adapter_cls(model, processor), name=path)

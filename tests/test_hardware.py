"""Offload planning: pure logic over a described machine and model."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama3zh_local import hardware
from llama3zh_local.errors import UsageError
from llama3zh_local.gguf.info import GGUFInfo

GIB = hardware.GIB


def _info(n_layer: int = 32, layer_gib: float = 4.0, out_gib: float = 0.5) -> GGUFInfo:
    return GGUFInfo(
        path=Path("m.gguf"),
        size=int((layer_gib + out_gib) * GIB),
        architecture="llama",
        name="m",
        n_layer=n_layer,
        n_embd=4096,
        n_head=32,
        n_head_kv=8,
        n_ctx_train=8192,
        n_vocab=128256,
        file_type="MOSTLY_Q4_K_M",
        chat_template=None,
        tensor_count=291,
        layer_bytes=int(layer_gib * GIB),
        output_bytes=int(out_gib * GIB),
    )


def _hw(free_gib: float | None, offload: bool = True) -> hardware.Hardware:
    devices = [hardware.Device("CPU", "cpu", "cpu", 16 * GIB, 16 * GIB)]
    if free_gib is not None:
        devices.insert(
            0, hardware.Device("CUDA0", "NVIDIA Test", "gpu", int(free_gib * GIB), 24 * GIB)
        )
    return hardware.Hardware(
        backends=("CUDA", "CPU") if offload else ("CPU",),
        gpu_offload=offload,
        devices=tuple(devices),
        ram_total=32 * GIB,
        ram_available=16 * GIB,
        system_info="",
        llama_cpp_python="0.3.36",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", None), ("AUTO", None), ("all", -1), ("-1", -1), ("0", 0), ("20", 20)],
)
def test_parse_gpu_layers(value: str, expected: int | None) -> None:
    assert hardware.parse_gpu_layers(value) == expected


@pytest.mark.parametrize("value", ["many", "-3", "1.5"])
def test_parse_gpu_layers_rejects(value: str) -> None:
    with pytest.raises(UsageError):
        hardware.parse_gpu_layers(value)


def test_auto_all_layers_when_vram_is_ample() -> None:
    plan = hardware.plan_offload(_info(), n_ctx=8192, requested=None, hw=_hw(20))
    assert plan.n_gpu_layers == 33


def test_auto_partial_offload() -> None:
    # 4 GiB of layers + 1 GiB KV (8192 ctx, 32 layers, 8 kv heads, dim 128, f16) = 5/32 GiB a layer
    info = _info()
    per_layer = (info.layer_bytes + info.kv_bytes_per_token * 8192) / 32
    plan = hardware.plan_offload(info, n_ctx=8192, requested=None, hw=_hw(3))
    assert plan.n_gpu_layers == int((3 * GIB - hardware.VRAM_RESERVE) // per_layer)
    assert 0 < plan.n_gpu_layers < 32
    assert "rest on the CPU" in plan.summary


def test_auto_nothing_fits() -> None:
    assert hardware.plan_offload(_info(), n_ctx=8192, requested=None, hw=_hw(0.5)).n_gpu_layers == 0


def test_cpu_only_build_ignores_gpu() -> None:
    plan = hardware.plan_offload(_info(), n_ctx=8192, requested=None, hw=_hw(20, offload=False))
    assert plan.n_gpu_layers == 0
    assert "without GPU support" in plan.summary


def test_explicit_layers() -> None:
    assert hardware.plan_offload(_info(), n_ctx=4096, requested=10, hw=_hw(20)).n_gpu_layers == 10
    assert hardware.plan_offload(_info(), n_ctx=4096, requested=-1, hw=_hw(20)).n_gpu_layers == 33


def test_more_layers_than_model_has() -> None:
    with pytest.raises(UsageError, match="has 32 layers"):
        hardware.plan_offload(_info(), n_ctx=4096, requested=40, hw=_hw(20))


def test_kv_bytes_per_token() -> None:
    # Llama-3-8B: 32 layers x 8 kv heads x 128 dims x (K+V) x 2 bytes = 128 KiB a token
    assert _info().kv_bytes_per_token == 128 * 1024


def test_reinstall_hint_names_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "gpu_hardware_present", lambda: "CUDA")
    hint = hardware.reinstall_hint(_hw(None, offload=False))
    assert hint is not None and "-DGGML_CUDA=on" in hint and "0.3.36" in hint
    assert hardware.reinstall_hint(_hw(20)) is None

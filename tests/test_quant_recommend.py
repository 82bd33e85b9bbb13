"""quant/recommend.py: the pick on simulated machines, the pull default, the CLI, and the rule
as the README states it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llama3zh_local import catalog
from llama3zh_local.cli import app
from llama3zh_local.hardware import GIB, Device, Hardware
from llama3zh_local.quant import recommend

ROOT = Path(__file__).resolve().parent.parent


# -- recommend ------------------------------------------------------------------------------------


def fake_hw(*, vram: int | None, ram: int, offload: bool = True) -> Hardware:
    devices = [Device("CPU", "cpu", "cpu", 0, 0)]
    if vram is not None:
        devices.append(Device("CUDA0", "NVIDIA RTX 4060", "gpu", vram, vram))
    return Hardware(("CUDA", "CPU") if offload else ("CPU",), offload, tuple(devices), ram * 2,
                    ram, "", "0.3.36")  # fmt: skip


KV_8K = recommend.kv_cache_bytes(n_layer=32, n_head_kv=8, head_dim=128, n_ctx=8192)


# a simulated machine's memory: CPU bytes/s (estimated), GPU bytes/s (assumed)
def fake_bw(cpu_gbs: float, gpu_gbs: float = 200) -> recommend.Bandwidth:
    return recommend.Bandwidth(cpu_gbs * 1e9, f"{cpu_gbs:g} GB/s, simulated", gpu_gbs * 1e9,
                               f"{gpu_gbs:g} GB/s, simulated")  # fmt: skip


def test_kv_cache_of_llama3_8b() -> None:
    assert KV_8K == GIB  # 8192 tokens x 32 layers x 8 heads x 128 x (K+V) x 2 bytes


@pytest.mark.parametrize(
    ("vram_gib", "ram_gib", "gpu", "ram"),
    [
        (24, 64, "q8_0", "q8_0"),  # f16 is never the pick
        (7.5, 32, "q5_k", "q8_0"),  # 5.34 + 1 (KV) + 0.75 fits 7.5 GiB; 6.14 + 1.75 not
        (6, 6, "q3_k", "q4_0"),  # GPU: 4.34 + 1.75 > 6; RAM: 4.34 + 1.5 <= 6
        (4, 4.5, None, "q2_k"),  # GPU: 2.96 + 1.75 > 4
        (2, 3, None, None),
        (None, 16, None, "q8_0"),
    ],
)
def test_recommend_gpu_and_ram_prefer_quality(
    vram_gib: float | None, ram_gib: float, gpu: str | None, ram: str | None
) -> None:
    hw = fake_hw(vram=None if vram_gib is None else int(vram_gib * GIB), ram=int(ram_gib * GIB))
    rec = recommend.recommend(recommend.catalog_candidates(), model="instruct-v3",
                              kv_bytes=KV_8K, n_ctx=8192, hw=hw, bandwidth=fake_bw(20),
                              prefer=recommend.Prefer.quality)  # fmt: skip
    assert (rec.gpu.candidate.label if rec.gpu else None) == gpu
    assert (rec.ram.candidate.label if rec.ram else None) == ram
    if gpu is None and ram is None:
        assert rec.choice.label == "q2_k" and any("smaller --ctx" in n for n in rec.notes)


def test_recommend_prefers_imatrix_files_and_knows_quality(tmp_path: Path) -> None:
    plain, im = tmp_path / "ggml-model-q4_k.gguf", tmp_path / "ggml-model-q4_k-im.gguf"
    for p in (plain, im):
        p.write_bytes(b"x" * 1000)
    cands = [recommend.candidate("q4_k", 1000, plain), recommend.candidate("q4_k-im", 1000, im),
             recommend.candidate("q8_0", 10**12)]  # fmt: skip
    rec = recommend.recommend(cands, model="m", kv_bytes=0, n_ctx=512,
                              hw=fake_hw(vram=None, ram=GIB), bandwidth=fake_bw(20))  # fmt: skip
    assert rec.ram is not None and rec.ram.candidate.label == "q4_k-im"
    assert "+0.1754" in rec.ram.candidate.quality  # llama.cpp's Llama-3-8B figure
    assert any("CPU only" in n or "no GPU" in n for n in rec.notes)


# Expected tok/s = bandwidth / size. CPU 20 GB/s: q8_0 2.3 ... q4_k 4.1 ... q2_k 6.3 (none
# reaches 8); 60 GB/s: q8_0 7.0, q6_k 9.1; a GPU at 200 GB/s: q8_0 23 (all reach 8).
@pytest.mark.parametrize(
    ("vram_gib", "ram_gib", "cpu_gbs", "prefer", "gpu", "ram", "why"),
    [
        (None, 16, 20, "balanced", None, "q4_k", "none as good as q4_k (Q4_K_M) decodes at 8"),
        (None, 32, 60, "balanced", None, "q6_k", "the best quality that decodes at 8 tok/s"),
        (None, 16, 20, "quality", None, "q8_0", "the best quality that fits"),
        (None, 32, 60, "speed", None, "q2_k", "the fastest that fits"),
        (8, 16, 20, "balanced", "q6_k", "q4_k", "the best quality that decodes at 8 tok/s"),
        (12, 16, 20, "balanced", "q8_0", "q4_k", "the best quality that decodes at 8 tok/s"),
        (24, 32, 60, "balanced", "q8_0", "q6_k", "the best quality that decodes at 8 tok/s"),
        (None, 5.5, 60, "balanced", None, "q3_k", "nothing as good as q4_k (Q4_K_M) fits"),
    ],
)
def test_recommend_weighs_speed(
    vram_gib: int | None, ram_gib: float, cpu_gbs: float, prefer: str, gpu: str | None,
    ram: str, why: str,
) -> None:  # fmt: skip
    hw = fake_hw(vram=None if vram_gib is None else vram_gib * GIB, ram=int(ram_gib * GIB))
    rec = recommend.recommend(recommend.catalog_candidates(), model="instruct-v3",
                              kv_bytes=KV_8K, n_ctx=8192, hw=hw, bandwidth=fake_bw(cpu_gbs),
                              prefer=recommend.Prefer(prefer))  # fmt: skip
    assert (rec.gpu.candidate.label if rec.gpu else None) == gpu
    assert rec.ram is not None and rec.ram.candidate.label == ram
    assert (rec.gpu or rec.ram).reason.startswith(why)
    assert rec.choice.label == (gpu or ram)
    q4_k = next(c for c in rec.candidates if c.label == "q4_k")
    assert rec.cpu_speed["q4_k"] == recommend.Speed(cpu_gbs * 1e9 / q4_k.size, False)
    assert bool(rec.gpu_speed) == (vram_gib is not None)


def test_measured_rates_beat_estimates(tmp_path: Path) -> None:
    q4, q8 = tmp_path / "ggml-model-q4_k.gguf", tmp_path / "ggml-model-q8_0.gguf"
    q4.write_bytes(b"x" * 4000)
    q8.write_bytes(b"x" * 8000)
    recommend.record_speed(q8, tps=9.0, device="cpu", tokens=64)  # as llama3zh chat does
    bw = recommend.machine_bandwidth()
    assert (
        bw.cpu == 9.0 * 8000
        and "ggml-model-q8_0.gguf at 9.0 tok/s in llama3zh chat" in bw.cpu_basis
    )
    assert bw.gpu == recommend.GPU_BANDWIDTH_ASSUMED and "assumed" in bw.gpu_basis
    cands = [recommend.candidate("q4_k", 4000, q4), recommend.candidate("q8_0", 8000, q8)]
    rec = recommend.recommend(cands, model="m", kv_bytes=0, n_ctx=512,
                              hw=fake_hw(vram=None, ram=GIB))  # fmt: skip
    assert rec.cpu_speed["q8_0"] == recommend.Speed(9.0, True)  # measured, this file
    assert rec.cpu_speed["q4_k"] == recommend.Speed(18.0, False)  # 72 kB/s over 4 kB
    assert rec.ram is not None and rec.ram.candidate.label == "q8_0"
    q8.write_bytes(b"x" * 8001)  # changed since: no longer measured
    assert recommend.measured_speeds() == {}


def test_pull_default_uses_recommend(monkeypatch: pytest.MonkeyPatch) -> None:
    from llama3zh_local import hardware
    from llama3zh_local.hub import pull as hub
    from llama3zh_local.hub import sources

    monkeypatch.setattr(hardware, "detect", lambda: fake_hw(vram=7 * GIB, ram=32 * GIB))
    names = [q.filename for q in catalog.GGUF_QUANTS]
    files = tuple(
        sources.RemoteFile(q.filename, int(q.size_gib * GIB)) for q in catalog.GGUF_QUANTS
    )
    listing = sources.Listing(sources.Source.HF, "hfl/x-gguf", "main", "c" * 40, files, True)
    choose = recommend.default_quant
    _, chosen, notes = hub.select_files(listing, variant=None, default_quant=choose)
    # 7 GiB of VRAM: q5_0 (5.21 + 1 GiB KV + 0.75) fits, q5_k (5.34 + 1.75) does not
    assert [f.name for f in chosen] == ["ggml-model-q5_0.gguf"] and "q5_0" in names[4]
    assert "fits fully on NVIDIA RTX 4060" in notes[0] and "KV cache" in notes[0]
    assert "decodes at 8 tok/s or more" in notes[0] and "tok/s estimated" in notes[0]
    # CPU only, 22 GiB of RAM at 20 GB/s (the machine): q4_k, not q8_0
    monkeypatch.setattr(hardware, "detect", lambda: fake_hw(vram=None, ram=22 * GIB))
    monkeypatch.setattr(recommend, "copy_bandwidth", lambda: 20e9)
    _, chosen, notes = hub.select_files(listing, variant=None, default_quant=choose)
    assert [f.name for f in chosen] == ["ggml-model-q4_k.gguf"]
    assert "none as good as q4_k (Q4_K_M) decodes at 8 tok/s here" in notes[0]


@pytest.mark.parametrize(
    ("vram_gib", "ram_gib", "cpu_gbs", "pick"),
    [(None, 16, 20, "RAM (16.00 GiB available): q4_k"),
     (None, 32, 60, "RAM (32.00 GiB available): q6_k"),
     (8, 16, 20, "GPU (NVIDIA RTX 4060, 8.00 GiB free): q6_k"),
     (12, 16, 20, "GPU (NVIDIA RTX 4060, 12.00 GiB free): q8_0"),
     (24, 32, 60, "GPU (NVIDIA RTX 4060, 24.00 GiB free): q8_0")],
)  # fmt: skip
@pytest.mark.usefixtures("fresh_consoles")
def test_cli_recommend_on_simulated_machines(
    monkeypatch: pytest.MonkeyPatch, vram_gib: int | None, ram_gib: int, cpu_gbs: float, pick: str
) -> None:
    from llama3zh_local import hardware

    hw = fake_hw(vram=None if vram_gib is None else vram_gib * GIB, ram=ram_gib * GIB)
    monkeypatch.setattr(hardware, "detect", lambda: hw)
    monkeypatch.setattr(recommend, "copy_bandwidth", lambda: cpu_gbs * 1e9)
    r = CliRunner().invoke(app, ["recommend"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert f"Rule (--prefer balanced): {recommend.RULE[recommend.Prefer.balanced]}." in out
    assert pick in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 5}
    q4_k = rows["q4_k"].split("│")
    cpu_tps = f"~{cpu_gbs * 1e9 / int(4.58 * GIB):.1f}"
    assert cpu_tps in [cell.strip() for cell in q4_k]  # CPU tok/s, marked as an estimate
    if vram_gib is not None:
        assert "GPU tok/s" in out and f"~{200e9 / int(4.58 * GIB):.1f}" in rows["q4_k"]
    text = " ".join(out.split())
    assert (
        "~ marks an estimate" in text
        and f"CPU {cpu_gbs:g}.0 GB/s, measured by a memory copy" in text
    )
    assert ("GPU 200 GB/s, assumed" in text) == (vram_gib is not None)
    data = json.loads(CliRunner().invoke(app, ["recommend", "--json", "--prefer", "speed"]).stdout)
    assert data["choice"] == "q2_k" and data["prefer"] == "speed"
    assert data["candidates"][0]["cpu_tps_measured"] is False


def test_cli_recommend_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from llama3zh_local import hardware

    monkeypatch.setattr(hardware, "detect", lambda: fake_hw(vram=12 * GIB, ram=16 * GIB))
    r = CliRunner().invoke(app, ["recommend", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["model"] == "instruct-v3" and data["ctx"] == 8192
    assert data["gpu"]["label"] == "q8_0" and data["choice"] == "q8_0"
    r = CliRunner().invoke(app, ["recommend", "--ctx", "2048"])
    assert r.exit_code == 0, r.output
    assert "GPU (NVIDIA RTX 4060, 12.00 GiB free): q8_0 (7.95 GiB" in r.stdout


def test_the_rule_is_in_the_readme() -> None:
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert recommend.READING_TPS == 8 and recommend.FLOOR_TYPE == "Q4_K_M"
    for words in (
        "at least as good as q4_k (Q4_K_M; below it quality drops steeply)",
        "the best quality among them that decodes at 8 tokens/s or more",
        "`--prefer quality` takes the best that fits however slow; `--prefer speed` the fastest",
        "`llama3zh pull` without `-q` downloads `recommend`'s pick by that rule",
        "质量不低于 q4_k（Q4_K_M，再小质量就急剧下降）",
        "解码速度能达到每秒 8 个词元",
        "`--prefer quality` 改为放得下的质量最好的",
        "下载的就是 `recommend` 按上述规则的选择",
    ):
        assert words in readme, words

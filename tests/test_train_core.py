"""The trainer (llama3zh_local/train/trainer.py) on a tiny random Llama-3 with the real vocab:
trained LoRA -> merge-lora -> GGUF equals transformers + PEFT; resume after Ctrl-C equals an
uninterrupted run; two processes under torchrun (gloo on CPU)."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file

from llama3zh_local.convert import lora as lr
from llama3zh_local.convert.peft import open_lora
from llama3zh_local.errors import MissingExtraError, UsageError
from llama3zh_local.train import launch, options
from llama3zh_local.train.options import TrainOptions
from llama3zh_local.train.trainer import train
from tests import models, trainproc
from tests.conftest import CACHE_ROOT

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["北京是中国的首都。", "Llama 3 是一个大语言模型", "The quick brown fox"]
# llama.cpp (f32 GGUF, but its KV cache in f16) vs transformers + PEFT in fp32: measured 1.3e-3
MAX_ABS_DELTA = 5e-3


@pytest.fixture(scope="module")
def base() -> Path:
    """The tiny Llama-3 in float32 (so that both sides start from the same weights)."""
    return models.cached(
        "tiny-llama3-hf-f32", models.build_tiny_llama3_hf, root=CACHE_ROOT, dtype="float32"
    )


def _small(kind: str, **changes: object) -> TrainOptions:
    return TrainOptions.for_kind(kind, lora_rank=8, lora_alpha=16, block_size=64, **changes)  # type: ignore[arg-type]


def _run_proc(spec: dict[str, object], *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tests.trainproc", json.dumps(spec)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_trained_lora_merges_to_a_gguf_that_equals_peft(base: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    opts = _small("pt", learning_rate=5e-3, grad_accum=2, max_steps=4, save_steps=2)
    assert opts.modules_to_save == ("embed_tokens", "lm_head")
    events = []
    held_out = trainproc.samples("pt")[:2]
    res = train(trainproc.samples("pt"), opts, base=base, out=tmp_path / "run",
                progress=events.append, eval_samples=held_out)  # fmt: skip
    assert res.eval_loss is not None and 0 < res.eval_loss < 20
    assert res.adapter_dir is not None and not res.interrupted
    assert (res.steps, res.total_steps) == (4, 4)
    adapter = res.adapter_dir
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base.resolve())
    assert cfg["r"] == 8 and cfg["modules_to_save"] == ["embed_tokens", "lm_head"]
    # the Trainer's checkpoints, each marked complete
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    assert (tmp_path / "run/checkpoints/checkpoint-4/.complete").is_file()
    # the loss curve beside the adapter
    assert res.loss_csv is not None and res.loss_png is not None
    rows = list(csv.reader(res.loss_csv.open()))
    assert rows[0] == ["step", "loss", "learning_rate"] and [r[0] for r in rows[1:]] == [
        "1", "2", "3", "4"
    ]  # fmt: skip
    assert res.loss_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    advance = [e for e in events if e.kind == "advance"]
    assert [e.done for e in advance] == [1, 2, 3, 4] and {e.total for e in advance} == {4}
    assert {"loss", "learning_rate", "tokens_per_second", "eta_seconds"} <= set(advance[-1].figures)
    # merge-lora reads PEFT's keys as they are: factors and the two full modules
    lora = open_lora(adapter)
    try:
        assert len(lora.pairs) == 2 * 7
        assert set(lora.full) == {"model.embed_tokens.weight", "lm_head.weight"}
    finally:
        lora.close()
    merged = lr.merge_lora(lora=adapter, base=base, output=tmp_path / "m.gguf", outtype="f32")

    model = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    plain = model.eval()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(models.llama3_tokenizer_json()))
    ids_list = [
        [models.LLAMA3_BOS_ID, *tok.encode(p, add_special_tokens=False).ids] for p in PROMPTS
    ]
    with torch.no_grad():
        before = [plain(torch.tensor([ids])).logits[0].numpy() for ids in ids_list]
    tuned = peft.PeftModel.from_pretrained(plain, str(adapter)).eval()
    worst = 0.0
    for ids, base_logits in zip(ids_list, before, strict=True):
        with torch.no_grad():
            want = tuned(torch.tensor([ids])).logits[0].numpy()
        got = models.llamacpp_logits(merged.path, ids, n_ctx=64)
        # training changed the model clearly, so the comparison below means something
        assert np.abs(want - base_logits).max() > 0.05
        assert (got.argmax(-1) == want.argmax(-1)).all()
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"max |llama.cpp - peft| over {len(PROMPTS)} prompts: {worst:.2e}")
    assert worst < MAX_ABS_DELTA


def test_restart_discards_another_runs_checkpoints(base: Path, tmp_path: Path) -> None:
    first = _small("sft", learning_rate=1e-3, grad_accum=1, max_steps=2, save_steps=1)
    res = train(trainproc.samples("sft"), first, base=base, out=tmp_path)
    assert res.steps == 2 and (tmp_path / "checkpoints/checkpoint-1/.complete").is_file()
    # a checkpoint cut short (no marker) is not resumed from and is removed
    (tmp_path / "checkpoints/checkpoint-9").mkdir()
    other = dataclasses.replace(first, max_steps=3)
    with pytest.raises(UsageError, match=r"max_steps 2 -> 3"):
        train(trainproc.samples("sft"), other, base=base, out=tmp_path)
    res = train(trainproc.samples("sft"), other, base=base, out=tmp_path, restart=True)
    assert res.steps == 3 and res.resumed_from_step is None and not res.reused
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "checkpoint-1", "checkpoint-2", "checkpoint-3"
    ]  # fmt: skip
    assert json.loads((tmp_path / "train-state.json").read_text())["options"]["max_steps"] == 3


def test_interrupted_run_resumes_to_the_same_weights(base: Path, tmp_path: Path) -> None:
    opts = {"lora_rank": 8, "lora_alpha": 16, "block_size": 64, "learning_rate": 1e-3,
            "grad_accum": 2, "max_steps": 6, "save_steps": 2, "seed": 7}  # fmt: skip
    spec = {"base": str(base), "kind": "sft", "options": opts}
    whole = _run_proc({**spec, "out": str(tmp_path / "a")})
    assert whole.returncode == 0, whole.stderr[-3000:]
    # SIGINT after step 2 is logged: the run saves checkpoint-3 (not a save_steps one) and stops
    cut = _run_proc({**spec, "out": str(tmp_path / "b"), "interrupt_at": 2})
    assert cut.returncode == 130, cut.stderr[-3000:]
    first = json.loads(cut.stdout.strip().splitlines()[-1])
    assert first["interrupted"] and first["steps"] == 3 and first["adapter_dir"] is None
    assert (tmp_path / "b/checkpoints/checkpoint-3/.complete").is_file()
    assert not (tmp_path / "b/adapter").exists()
    # another command on the same folder is refused before anything loads
    other = TrainOptions.for_kind("sft", **{**opts, "learning_rate": 2e-3})  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="learning_rate") as err:
        train(trainproc.samples("sft"), other, base=base, out=tmp_path / "b")
    assert "--restart" in (err.value.hint or "")
    # the same command resumes and ends where the uninterrupted run ended
    again = _run_proc({**spec, "out": str(tmp_path / "b")})
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout.strip().splitlines()[-1])
    assert second["resumed_from_step"] == 3 and second["steps"] == 6
    a, b = _adapter_weights(tmp_path / "a/adapter"), _adapter_weights(tmp_path / "b/adapter")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max |uninterrupted - resumed| over the adapter: {worst:.2e}")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert any(float(a[k].abs().max()) > 0 for k in a if "lora_B" in k)  # it did train
    # the same command once more: the finished run is reported, nothing trains
    res = train(trainproc.samples("sft"), TrainOptions.for_kind("sft", **opts), base=base,  # type: ignore[arg-type]
                out=tmp_path / "b")  # fmt: skip
    assert res.reused and res.steps == 6 and res.adapter_dir == (tmp_path / "b/adapter").resolve()


LAUNCHER = """
import json, os, sys
from llama3zh_local.train import launch
spec = json.loads(sys.argv[1])
spec["signal_pid"] = os.getpid()  # Ctrl-C reaches the launcher, which forwards it
sys.exit(launch.relaunch(2, [json.dumps(spec)], module="tests.trainproc"))
"""


def test_two_processes_under_torchrun(base: Path, tmp_path: Path) -> None:
    opts = {"lora_rank": 8, "lora_alpha": 16, "block_size": 64, "learning_rate": 1e-3,
            "grad_accum": 1, "max_steps": 3, "save_steps": 10, "gpus": 2}  # fmt: skip
    spec = {"base": str(base), "kind": "sft", "options": opts, "out": str(tmp_path / "ddp")}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def launch_run(**extra: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", LAUNCHER, json.dumps({**spec, **extra})],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    # SIGINT to the launcher after step 1: both processes save checkpoint-2 and stop
    cut = launch_run(interrupt_at=1)
    assert cut.returncode == 130, cut.stderr[-3000:]
    ck = tmp_path / "ddp/checkpoints/checkpoint-2"
    assert (ck / ".complete").is_file()
    assert {p.name for p in ck.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    done = launch_run()
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["resumed_from_step"] == 2 and result["steps"] == 3
    adapter = tmp_path / "ddp/adapter"
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    tuned = peft.PeftModel.from_pretrained(model, str(adapter))
    assert sum(1 for n, _ in tuned.named_parameters() if "lora_A" in n) == 2 * 7
    state = json.loads((tmp_path / "ddp/train-state.json").read_text())
    assert state["complete"] and state["steps"] == 3


def test_options_checked_before_loading(base: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--gpus 2") as err:
        train(trainproc.samples("sft"), _small("sft", gpus=2), base=base, out=tmp_path)
    assert "relaunch" in (err.value.hint or "")
    with pytest.raises(UsageError, match="would hold the base model"):
        train(trainproc.samples("sft"), _small("sft"), base=base, out=base.parent)
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="is a file"):
        train(trainproc.samples("sft"), _small("sft"), base=base, out=tmp_path / "f")
    with pytest.raises(UsageError, match="no training samples"):
        train([], _small("sft"), base=base, out=tmp_path / "new")


def test_missing_extras_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without(*names: str):  # type: ignore[no-untyped-def]
        return lambda name, *a: None if name in names else real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", without("peft"))
    with pytest.raises(MissingExtraError, match=r"\[train\] extra \(peft") as err:
        options.require_extra()
    assert 'pip install "llama3zh-local[train]"' in (err.value.hint or "")
    assert "pytorch.org/get-started/locally" in (err.value.hint or "")
    monkeypatch.setattr(importlib.util, "find_spec", without("bitsandbytes", "deepspeed"))
    with pytest.raises(MissingExtraError, match="--bits 4 needs bitsandbytes") as err:
        options.require_extra(bits=4)
    assert "llama3zh-local[qlora]" in (err.value.hint or "")
    with pytest.raises(MissingExtraError, match="--deepspeed zero2 needs DeepSpeed"):
        options.require_extra(deepspeed="zero2")


def test_deepspeed_config_is_upstreams(tmp_path: Path) -> None:
    path = launch.write_deepspeed_config("zero2", tmp_path)
    cfg = json.loads(path.read_text())
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["train_micro_batch_size_per_gpu"] == "auto"
    assert (
        json.loads(launch.write_deepspeed_config("zero3", tmp_path).read_text())[
            "zero_optimization"
        ]["stage"]
        == 3
    )
    cmd = launch.torchrun_command(2, ["llama3zh_local", "train"], module=True)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       "-m", "llama3zh_local", "train"]  # fmt: skip


def test_collator_pads_labels_with_ignore_index() -> None:
    from llama3zh_local.train.trainer import PaddingCollator, SampleDataset

    samples = trainproc.samples("sft")[:2]
    data = SampleDataset(samples, block_size=20)  # 18 and 23 ids: one cut, one padded
    collate = PaddingCollator(pad_id=models.LLAMA3_EOT_ID)
    batch = collate([data[0], data[1]])
    lengths = [min(20, len(s.input_ids)) for s in samples]
    n = max(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, n)
    for i, k in enumerate(lengths):
        assert batch["attention_mask"][i].tolist() == [1] * k + [0] * (n - k)
        assert batch["labels"][i, k:].tolist() == [-100] * (n - k)
        assert batch["input_ids"][i, k:].tolist() == [models.LLAMA3_EOT_ID] * (n - k)
        assert batch["labels"][i, :k].tolist() == list(samples[i].labels[:k])
    assert collate.tokens == sum(lengths)


def test_live_view_line() -> None:
    from llama3zh_local.train.callbacks import figures_line

    full = {"loss": 2.31014, "learning_rate": 9.5e-5, "tokens_per_second": 1234.5,
            "gpu_memory_bytes": 3.5 * (1 << 30)}  # fmt: skip
    assert figures_line(full) == "loss 2.3101 · lr 9.5e-05 · 1,234 tok/s · GPU 3.5 GiB"
    assert figures_line({"loss": 1.0, "learning_rate": 0.0}) == "loss 1.0000 · lr 0.0e+00"

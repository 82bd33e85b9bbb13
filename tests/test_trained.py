"""trained.finish_adapter: a PEFT LoRA folder on the tiny Llama-3 to a merged, quantized GGUF that
llama.cpp loads, its perplexity on a held-out text, a Modelfile and an Ollama model; reruns reuse
every finished step, and a changed adapter redoes them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from llama3zh_local import trained
from llama3zh_local.errors import ModelNotFoundError, UsageError
from llama3zh_local.files import state
from llama3zh_local.gguf.info import read_gguf_info
from llama3zh_local.progress import REUSE, Event
from llama3zh_local.quant.evaluate import default_eval_text

from . import lorafix, models
from .fake_ollama import FakeOllama

IDS = [
    models.LLAMA3_BOS_ID,
    9906,
    1917,
    11,
    856,
    374,
    264,
    1296,
    13,
]  # "<bos>Hello world, this is a test."
CHUNKS, CTX = 2, 64
runner = CliRunner()


@pytest.fixture(scope="module")
def lora(tiny_llama3_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rank 8 on all seven targets, embed_tokens and lm_head in full: what `train pt` writes."""
    return lorafix.build_lora(tmp_path_factory.mktemp("lora") / "lora", tiny_llama3_hf)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "held-out.txt"
    path.write_text(default_eval_text().read_text(encoding="utf-8")[:6000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished(
    lora: Path, tiny_llama3_hf: Path, held_out: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[trained.FinishResult, list[Event]]:
    events: list[Event] = []
    result = trained.finish_adapter(
        adapter=lora, base=tiny_llama3_hf, then="Q4_K_M",
        out_dir=tmp_path_factory.mktemp("out") / "out", eval_texts=held_out,
        chunks=CHUNKS, ctx=CTX, threads=2, progress=events.append,
    )  # fmt: skip
    return result, events


def test_the_whole_chain(finished: tuple[trained.FinishResult, list[Event]]) -> None:
    result, events = finished
    out = result.plan.out_dir
    assert result.plan.steps == ("merge", "convert", "imatrix", "quantize", "eval", "modelfile")
    assert result.quant == out / "ggml-model-q4_k-im.gguf"
    assert result.imatrix is not None and result.imatrix.is_file()
    assert read_gguf_info(result.quant).file_type == "MOSTLY_Q4_K_M"
    assert read_gguf_info(result.f16).file_type == "MOSTLY_F16"
    assert result.reused == ()
    # the run's own step lines, numbered over the whole chain
    heads = [e.task for e in events if e.stage == "run" and e.kind == "start"]
    assert heads == [f"[{i}/6] {s}" for i, s in enumerate(result.plan.steps, 1)]
    # every artifact recorded in OUT's state file
    recorded = state.read_state(out)
    for p in (result.f16, result.quant, result.modelfile, result.eval_json, out / "merge.json"):
        assert p is not None and recorded[p.name].matches(p)
    merge = json.loads((out / "merge.json").read_text(encoding="utf-8"))
    assert sorted(merge["replaced_modules"]) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert merge["merged_modules"] == 7 * 2


def test_the_merged_gguf_is_the_merged_model(
    finished: tuple[trained.FinishResult, list[Event]], tiny_llama3_hf: Path
) -> None:
    result, _ = finished
    want = models.llama_reference_logits(result.merged, IDS)
    base = models.llama_reference_logits(tiny_llama3_hf, IDS)
    got = models.llamacpp_logits(result.f16, IDS, n_ctx=64)
    assert np.abs(want - base).max() > 10 * np.abs(got - want).max()  # the LoRA is in there
    assert (got.argmax(-1) == want.argmax(-1)).all()
    q = models.llamacpp_logits(result.quant, IDS, n_ctx=64)  # llama.cpp loads the quant
    assert np.isfinite(q).all() and q.shape == want.shape


def test_eval_and_modelfile(finished: tuple[trained.FinishResult, list[Event]]) -> None:
    result, _ = finished
    labels = [label for label, _, _ in result.ppl]
    assert labels == ["f16", "q4_k-im"]
    assert all(np.isfinite(ppl) and ppl > 1 for _, ppl, _ in result.ppl)
    assert result.eval_md is not None and "held-out.txt" in result.eval_md.read_text("utf-8")
    text = result.modelfile.read_text(encoding="utf-8")
    assert "FROM ./ggml-model-q4_k-im.gguf" in text
    assert "<|eot_id|>" in text  # Llama-3 stops: what `train sft` renders


def test_rerun_reuses_everything(
    finished: tuple[trained.FinishResult, list[Event]], lora: Path, tiny_llama3_hf: Path,
    held_out: Path,
) -> None:  # fmt: skip
    first, _ = finished
    events: list[Event] = []
    again = trained.finish_adapter(
        adapter=lora, base=tiny_llama3_hf, then="Q4_K_M", out_dir=first.plan.out_dir,
        eval_texts=held_out, chunks=CHUNKS, ctx=CTX, threads=2, progress=events.append,
    )  # fmt: skip
    assert set(again.reused) == {"merge", "convert", "imatrix", "quantize", "eval", "modelfile"}
    assert again.sha256 == first.sha256
    assert again.ppl == first.ppl
    assert [e.task for e in events if e.stage == "run" and e.kind == REUSE] == [
        "[1/6] merge", "[5/6] eval", "[6/6] modelfile",
    ]  # fmt: skip


def test_a_changed_adapter_is_merged_again(
    lora: Path, tiny_llama3_hf: Path, tmp_path: Path
) -> None:
    """Same OUT, an adapter retrained in place (new weights): nothing stale is reused; Q8_0
    gets no imatrix (it would not change it), and --ollama creates the model."""
    mine = shutil.copytree(lora, tmp_path / "lora")
    out = tmp_path / "out"
    first = trained.finish_adapter(adapter=mine, base=tiny_llama3_hf, then="q8_0", out_dir=out)
    assert first.plan.steps == ("merge", "convert", "quantize", "modelfile")
    assert first.quant.name == "ggml-model-q8_0.gguf" and first.imatrix is None
    shutil.rmtree(mine)
    lorafix.build_lora(mine, tiny_llama3_hf, seed=7)
    with FakeOllama() as fake:
        second = trained.finish_adapter(
            adapter=mine, base=tiny_llama3_hf, then="Q8_0", out_dir=out,
            ollama="my-tiny:q8", ollama_host=fake.host,
        )  # fmt: skip
        (create,) = fake.find("POST", "/api/create")
    assert second.reused == ()
    assert second.sha256 != first.sha256
    assert create.json["model"] == "my-tiny:q8"
    assert create.json["files"] == {second.quant.name: f"sha256:{second.sha256}"}
    assert second.ollama is not None


@pytest.mark.parametrize(
    ("then", "imatrix", "want"),
    [
        ("Q4_K_M", None, ("Q4_K_M", True)),
        ("q4_k", None, ("Q4_K_M", True)),
        ("Q4_K_M", False, ("Q4_K_M", False)),
        ("Q8_0", None, ("Q8_0", False)),
        ("Q8_0-im", None, ("Q8_0", True)),
        ("IQ3_XXS", None, ("IQ3_XXS", True)),
    ],
)
def test_parse_then(then: str, imatrix: bool | None, want: tuple[str, bool]) -> None:
    assert trained.parse_then(then, imatrix) == want


@pytest.mark.parametrize(
    ("then", "imatrix", "needle"),
    [
        ("F16", None, "not a quant type"),
        ("Q9_Z", None, "Q9_Z"),
        ("IQ3_XXS", False, "needs an importance matrix"),
        ("Q4_K_M-im", False, "turned off"),
    ],
)
def test_bad_then(then: str, imatrix: bool | None, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        trained.parse_then(then, imatrix)


def test_checked_before_anything_is_written(
    lora: Path, tiny_llama3_hf: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(ModelNotFoundError, match="not a LoRA folder"):
        trained.finish_adapter(adapter=tiny_llama3_hf, base=tiny_llama3_hf, then="Q8_0",
                               out_dir=out)  # fmt: skip
    with pytest.raises(ModelNotFoundError, match="not an HF checkpoint"):
        trained.finish_adapter(adapter=lora, base=tmp_path, then="Q8_0", out_dir=out)
    with pytest.raises(UsageError, match="Ollama"):
        trained.finish_adapter(adapter=lora, base=tiny_llama3_hf, then="Q8_0", out_dir=out,
                               ollama="Bad Name!")  # fmt: skip
    with pytest.raises(UsageError, match="held-out"):
        trained.finish_adapter(adapter=lora, base=tiny_llama3_hf, then="Q8_0", out_dir=out,
                               eval_texts=tmp_path / "missing.txt")  # fmt: skip
    assert not out.exists()
    # a file there that llama3zh did not write is neither reused nor replaced
    out.mkdir()
    (out / "ggml-model-q8_0.gguf").write_bytes(b"mine")
    with pytest.raises(UsageError, match="no record of making it"):
        trained.finish_adapter(adapter=lora, base=tiny_llama3_hf, then="Q8_0", out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["ggml-model-q8_0.gguf"]
    (out / "ggml-model-q8_0.gguf").unlink()
    (out / "merged").mkdir()
    (out / "merged" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UsageError, match="notes.txt"):
        trained.finish_adapter(adapter=lora, base=tiny_llama3_hf, then="Q8_0", out_dir=out)
    assert sorted(p.name for p in out.rglob("*")) == ["merged", "notes.txt"]


# -- the CLI side (cli/_finish.py, what `train --then` calls) -------------------------------------


def finish_app() -> typer.Typer:
    """A one-command app around cli._finish.finish, as the train command uses it."""
    from llama3zh_local.cli import _finish
    from llama3zh_local.cli._errors import handle_errors

    app = typer.Typer()

    @app.command()
    @handle_errors
    def main(
        adapter: Path, base: Path, then: str, out: Path, ollama: str | None = None,
        dry_run: bool = False,
    ) -> None:  # fmt: skip
        _finish.finish(adapter=adapter, base=base, then=then, out_dir=out, ollama=ollama,
                       dry_run=dry_run)  # fmt: skip

    return app


def test_cli_dry_run_then_run(lora: Path, tiny_llama3_hf: Path, tmp_path: Path) -> None:
    app, out = finish_app(), tmp_path / "out"
    args = [str(lora), str(tiny_llama3_hf), "Q8_0", str(out)]
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "[1/4] merge" in dry.stderr and "[3/4] quantize to ggml-model-q8_0.gguf" in dry.stderr
    assert dry.stdout == "" and not out.exists()
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == str(out / "ggml-model-q8_0.gguf")


def test_cli_one_line_error(lora: Path, tmp_path: Path) -> None:
    result = runner.invoke(finish_app(), [str(lora), str(tmp_path), "Q8_0", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "not an HF checkpoint" in result.stderr
    assert "Hint: " in result.stderr and "Traceback" not in result.stderr


def test_the_adapter_may_live_in_out(lora: Path, tiny_llama3_hf: Path, tmp_path: Path) -> None:
    """train writes OUT/adapter and finishes into OUT; OUT/merged holding an input is refused."""
    out = tmp_path / "run"
    adapter = shutil.copytree(lora, out / "adapter")
    result = trained.finish_adapter(adapter=adapter, base=tiny_llama3_hf, then="Q8_0", out_dir=out)
    assert result.quant.parent == out and (adapter / "adapter_config.json").is_file()
    inside = shutil.copytree(lora, tmp_path / "run2" / "merged" / "lora")
    with pytest.raises(UsageError, match="holds the input"):
        trained.plan_finish(adapter=inside, base=tiny_llama3_hf, then="Q8_0",
                            out_dir=tmp_path / "run2")  # fmt: skip


def test_a_chatml_base_gets_its_own_template(smollm2_hf: Path, tmp_path: Path) -> None:
    """SmolLM2 chats in ChatML: the Modelfile gets that template (not Llama-3's), with a note."""
    lora = lorafix.build_lora(tmp_path / "smol-lora", smollm2_hf, full=(), tokenizer=False)
    result = trained.finish_adapter(adapter=lora, base=smollm2_hf, then="Q8_0",
                                    out_dir=tmp_path / "out")  # fmt: skip
    assert any("ChatML" in n for n in result.notes)
    text = result.modelfile.read_text(encoding="utf-8")
    assert "<|im_start|>" in text and "<|eot_id|>" not in text
    assert "FROM ./ggml-model-q8_0.gguf" in text
    assert "llama3zh train --then" in text and "smol-lora" in text

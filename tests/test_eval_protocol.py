"""`--protocol paper`: the paper's EgoSchema protocol end to end on tiny chat models of two families, what it
requires, what it records; and InternVL's remote-code checkpoints refused with the -hf names (both CLIs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_recipes.synthetic import eval_item
from data_recipes.video import write_video
from evalsuite import prompts
from evalsuite.checkpoints import CheckpointError, checkpoint_ref, discover
from evalsuite.cli import main
from evalsuite.config import ConfigError, EvalConfig
from evalsuite.extraction import extract_choice
from evalsuite.generation import ChatModel
from evalsuite.outputs import read_rows
from helpers import fast_config, tiny_model
from train.families import FamilyError, detect_family

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("llava", "qwen2_vl")
FAST = ["--limit", "2", "--infill-tokens", "3", "--answer-tokens", "4", "--n-boot", "50", "--no-progress",
        "--no_tracking"]
HF_NAMES = ("OpenGVLab/InternVL2_5-8B-MPO-hf", "OpenGVLab/InternVL3-8B-hf")


@pytest.fixture
def egoschema(tmp_path):
    """An EgoSchema-layout directory: 3 answered questions, 24-frame videos from the synthetic generator."""
    root = tmp_path / "egoschema"
    (root / "videos").mkdir(parents=True)
    items = {f"q{i}": eval_item(0, i) for i in range(3)}
    qs = [{"q_uid": uid, "question": it["question"], **{f"option {k}": it["options"][k] for k in range(5)}}
          for uid, it in items.items()]
    for uid, it in items.items():
        write_video(root / "videos" / f"{uid}.mp4", it["frames"][:24])
    (root / "questions.json").write_text(json.dumps(qs))
    (root / "subset_answers.json").write_text(json.dumps({uid: it["answer"] for uid, it in items.items()}))
    return root, items


def _text_lm(out: Path, tmp_path_factory) -> Path:
    """A tiny text-only causal LM with the tiny llava's tokenizer (the rephraser)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model("llava", tmp_path_factory))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def helpers(tmp_path, tmp_path_factory):
    """The paper's three helper models, tiny: a chat judge, a fixed infill generator, a text rephraser."""
    judge = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "judge")
    generator = shutil.copytree(tiny_model("qwen2_vl", tmp_path_factory), tmp_path / "generator")
    return {"judge": judge, "generator": generator, "rephraser": _text_lm(tmp_path / "rephraser", tmp_path_factory)}


def _paper_args(root: Path, h: dict) -> list[str]:
    return ["--benchmark", "egoschema", "--data", str(root), "--judge", str(h["judge"]),
            "--infills", f"model:{h['generator']}", "--rephraser", str(h["rephraser"])]


@pytest.fixture
def chat_log(monkeypatch):
    """Every `ChatModel.generate` call: (model name, the prompts, the answers), in order."""
    log: list[tuple[str, list, list]] = []
    real = ChatModel.generate

    def spy(self, contents, images=None, **kw):
        out = real(self, contents, images, **kw)
        log.append((self.name, list(contents), list(out)))
        return out

    monkeypatch.setattr(ChatModel, "generate", spy)
    return log


def _judged_answer(content: list[dict]) -> str:
    """The model answer a judge prompt asks about (the last 'Answer:' line, before 'Your reply:')."""
    text = content[-1]["text"]
    assert text.endswith("\nYour reply:")
    return text.rsplit("\nAnswer: ", 1)[1].removesuffix("\nYour reply:")


def _last_text(content: list[dict]) -> str:
    return [p for p in content if p["type"] == "text"][-1]["text"]


# ---------------------------------------------------------------------------------------------- settings


def test_a_helper_model_the_run_would_not_use_is_refused(tmp_path):
    """--judge reads generated answers, --rephraser shortens generated infills: with loglik scoring, or with
    oracle or file infills, they would do nothing, and the run would go on as if they had been used."""
    judge, reph = tmp_path / "judge", tmp_path / "reph"
    judge.mkdir(), reph.mkdir()
    with pytest.raises(ConfigError, match=rf"--judge {judge}: .*with --scoring loglik no answer is generated"):
        EvalConfig(judge=str(judge))
    assert EvalConfig(judge=str(judge), scoring="generate").judge == str(judge)
    infills = tmp_path / "infills.jsonl"
    infills.write_text("")
    for source in ("oracle", "oracle_noisy:0.2", f"file:{infills}"):
        with pytest.raises(ConfigError, match=rf"--rephraser {reph}: .*--infills {source} are not generated"):
            EvalConfig(rephraser=str(reph), infills=source)
    for source in ("self", f"model:{tmp_path / 'judge'}"):
        assert EvalConfig(rephraser=str(reph), infills=source).rephraser == str(reph)


def test_egoschema_defaults_to_the_paper_and_names_everything_it_misses(egoschema, tmp_path):
    root, _ = egoschema
    with pytest.raises(ConfigError) as err:
        EvalConfig(benchmark="egoschema", data=str(root))
    msg = str(err.value)
    assert "--protocol paper (the default for --benchmark egoschema)" in msg
    assert "--judge DIR" in msg and "--infills model:DIR" in msg and "got --infills self" in msg
    assert "--rephraser DIR" in msg and "--protocol custom" in msg

    d = {n: tmp_path / n for n in ("judge", "gen", "reph")}
    for p in d.values():
        p.mkdir()
    full = dict(benchmark="egoschema", data=str(root), judge=str(d["judge"]), infills=f"model:{d['gen']}",
                rephraser=str(d["reph"]))
    cfg = EvalConfig(**full)
    assert (cfg.protocol, cfg.scoring, cfg.frames) == ("paper", "generate", (5, 10))
    assert EvalConfig(**full, frames=(10,)).frames == (10,)  # one column of the paper's table
    assert EvalConfig(**full, scoring="generate").scoring == "generate"
    # each missing piece is named alone
    with pytest.raises(ConfigError, match="needs --judge DIR") as err:
        EvalConfig(**(full | {"judge": None}))
    assert "--rephraser" not in str(err.value) and "--infills" not in str(err.value)
    with pytest.raises(ConfigError, match=r"needs --infills model:DIR .*got --infills self"):
        EvalConfig(**(full | {"infills": "self"}))
    with pytest.raises(ConfigError, match="needs --rephraser DIR"):
        EvalConfig(**(full | {"rephraser": None}))
    # flags that contradict the protocol are errors, not silent overrides
    with pytest.raises(ConfigError, match=r"contradicts --scoring loglik"):
        EvalConfig(**full, scoring="loglik")
    with pytest.raises(ConfigError, match=r"contradicts --frames 3 4 .*F = 5 and 10"):
        EvalConfig(**full, frames=(3, 4))
    with pytest.raises(ConfigError, match="Did you mean 'paper'"):
        EvalConfig(**full, protocol="papr")
    # an explicit protocol always wins
    custom = EvalConfig(benchmark="egoschema", data=str(root), protocol="custom")
    assert (custom.protocol, custom.scoring) == ("custom", "loglik")
    synthetic = EvalConfig()
    assert (synthetic.protocol, synthetic.scoring) == ("custom", "loglik")
    with pytest.raises(ConfigError, match=r"^--protocol paper needs --judge"):  # explicit: no "(the default...)"
        EvalConfig(protocol="paper")
    paper_synthetic = EvalConfig(protocol="paper", judge=str(d["judge"]), infills=f"model:{d['gen']}",
                                 rephraser=str(d["reph"]))
    assert paper_synthetic.scoring == "generate"


def test_cli_refuses_an_incomplete_paper_run_before_loading_anything(egoschema, tmp_path, capsys, monkeypatch):
    import evalsuite.resources

    root, _ = egoschema

    def no_loading(*a, **k):
        raise AssertionError("nothing may load before the settings are checked")

    monkeypatch.setattr(evalsuite.resources, "load_checkpoint", no_loading)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    assert main(["vcot", str(ckpt), "--benchmark", "egoschema", "--data", str(root), "--no_tracking"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --protocol paper (the default for --benchmark egoschema) needs --judge DIR")
    assert "--infills model:DIR" in err and "--rephraser DIR" in err
    judge = tmp_path / "judge"
    judge.mkdir()
    args = ["vcot", str(ckpt), "--benchmark", "egoschema", "--data", str(root), "--judge", str(judge),
            "--rephraser", str(judge), "--no_tracking"]
    assert main([*args, "--infills", "self"]) == 2
    err = capsys.readouterr().err
    assert "needs --infills model:DIR (one fixed infill generator" in err and "--judge DIR" not in err
    assert main([*args, "--infills", f"model:{judge}", "--scoring", "loglik"]) == 2
    assert "contradicts --scoring loglik" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- end to end


def test_paper_protocol_end_to_end_on_two_families(egoschema, helpers, tmp_path, tmp_path_factory, chat_log,
                                                   one_thread):
    root, items = egoschema
    ckpts = [shutil.copytree(tiny_model(f, tmp_path_factory), tmp_path / "ckpt" / f) for f in FAMILIES]
    assert main(["vcot", *map(str, ckpts), *_paper_args(root, helpers), *FAST]) == 0

    judge_fp = str(helpers["judge"].resolve())
    for ckpt in ckpts:
        m = json.loads((ckpt / "eval/vcot/metrics.json").read_text())
        s = m["settings"]
        assert (s["protocol"], s["scoring"], s["frames"]) == ("paper", "generate", [5, 10])
        assert s["answer_instruction"] == prompts.ANSWER_HASH and s["judge"].startswith(judge_fp)
        assert s["judge"].endswith(prompts.JUDGE_HASH)
        assert s["infills"].startswith(f"model:{helpers['generator'].resolve()}@") and "+rephraser:" in s["infills"]
        assert "loglik_norm" not in s and s["item_set"].startswith("2@")
        assert {"failed_base", "failed_caption", "failed_vcot"} <= set(m["metrics"]["f5"])
        rows = read_rows(ckpt / "eval/vcot/predictions.jsonl")
        assert len(rows) == 2 * 2 * 6 and {r["frames"] for r in rows} == {5, 10}
        assert all(isinstance(r["output"], str) and r["extraction"] in ("letter", "text", "judge", "failed")
                   for r in rows)
        for r in rows:  # uniform sampling of a 24-frame video (reversed: last to first; blind, text_only: none)
            uniform = [int(i * 24 / (r["frames"] + 1)) for i in range(1, r["frames"] + 1)]
            shown = {"reversed": uniform[::-1], "blind": [], "text_only": []}.get(r["condition"], uniform)
            assert r["indices"] == shown

    subject_prompts = [c for name, contents, _ in chat_log if name in FAMILIES for c in contents]
    # one generated answer per row, per checkpoint, except blind: the same prompt for F = 5 and 10, asked once
    assert len(subject_prompts) == 2 * (2 * 2 * 6 - 2)
    for content in subject_prompts:
        text = _last_text(content)
        assert text.endswith("\n" + prompts.ANSWER_LETTER)
        assert any(text.startswith(prompts.question_block(it["question"], it["options"])) for it in items.values())
    helper_prompts = [c for name, contents, _ in chat_log if name in ("generator", "rephraser", "judge")
                      for c in contents]
    assert helper_prompts and not any(prompts.ANSWER_LETTER in _last_text(c) for c in helper_prompts)

    # the judge sees exactly the answers the rules could not read (never a letter, never an empty answer)
    asked = sorted(_judged_answer(c) for name, contents, _ in chat_log if name == "judge" for c in contents)
    rows = [(r, items[r["item"]]) for ckpt in ckpts for r in read_rows(ckpt / "eval/vcot/predictions.jsonl")]
    unread = sorted(r["output"].strip() for r, it in rows  # a repeated blind row was not judged again
                    if extract_choice(r["output"], it["options"]).method == "failed" and r["output"].strip()
                    and "scored_with" not in r)
    assert asked == unread
    assert all(r["extraction"] in ("judge", "failed") for r, it in rows if r["output"].strip() in unread)

    # infills come from the one generator, made once and shared by both checkpoints through the cache
    pairs, frames = set(), set()
    for r, _ in rows:
        if r["condition"] == "vcot":
            pairs |= {(r["item"], a, b) for a, b in zip(r["indices"], r["indices"][1:])}
        if r["condition"] == "caption":
            frames |= {(r["item"], i) for i in r["indices"]}
    generated = sum(len(contents) for name, contents, _ in chat_log if name == "generator")
    shortened = sum(len(contents) for name, contents, _ in chat_log if name == "rephraser")
    assert generated == 2 * len(pairs) + len(frames) and shortened == len(pairs)


def test_the_judge_is_asked_only_when_extraction_fails(egoschema, helpers, tmp_path, tmp_path_factory,
                                                       monkeypatch, one_thread):
    """Scripted answers of the evaluated model and of the judge: letters never reach the judge, an answer no
    rule reads does, its reply is read for a letter and Z (none of the options) stays a recorded failure."""
    root, items = egoschema
    ckpt = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "subject")
    unreadable = "hard to say from these frames"
    # in row order: base, caption, vcot, blind, text_only, reversed of the first item, then the second's letters
    answers = iter([unreadable, "B", "", unreadable, "The answer is (C).", unreadable, "A", "A", "A", "E", "E", "E"])
    replies = iter(["Z", "D", "D"])
    asked: list[list[dict]] = []
    real = ChatModel.generate

    def scripted(self, contents, images=None, **kw):
        if self.name == "subject":
            kw["lengths"].extend(100 for _ in contents)  # the caller's list of each prompt's longest sequence
            return [next(answers) for _ in contents]
        if self.name == "judge":
            asked.extend(contents)
            return [next(replies) for _ in contents]
        return real(self, contents, images, **kw)

    monkeypatch.setattr(ChatModel, "generate", scripted)
    assert main(["vcot", str(ckpt), *_paper_args(root, helpers), *FAST, "--frames", "5"]) == 0
    rows = read_rows(ckpt / "eval/vcot/predictions.jsonl")
    assert len(rows) == 2 * 6
    assert [r["condition"] for r in rows if r["output"] == unreadable] == ["base", "blind", "reversed"]
    by_output: dict[str, list[dict]] = {}
    for r in rows:
        by_output.setdefault(r["output"], []).append(r)
    assert [(r["pred"], r["extraction"]) for r in by_output["B"]] == [(1, "letter")]
    assert [(r["pred"], r["extraction"]) for r in by_output["The answer is (C)."]] == [(2, "letter")]
    assert [(r["pred"], r["extraction"]) for r in by_output[""]] == [(None, "failed")]
    unread = by_output[unreadable]
    assert len(asked) == len(unread) == 3  # one judge call per unreadable answer, none for the others
    assert [(r["pred"], r["extraction"]) for r in unread] == [(None, "failed"), (3, "judge"), (3, "judge")]
    for content, r in zip(asked, unread):  # the judge prompt: question, lettered options, the answer, Z
        text = content[-1]["text"]
        it = items[r["item"]]
        assert f"Question: {it['question']}\nOptions:\n" + "\n".join(
            f"{'ABCDE'[k]}. {o}" for k, o in enumerate(it["options"])) in text
        assert text.endswith(f"Answer: {unreadable}\nYour reply:") and "reply Z" in text
    m = json.loads((ckpt / "eval/vcot/metrics.json").read_text())
    failed = m["metrics"]["f5"]
    n_failed = sum(r["pred"] is None for r in rows)
    assert sum(failed[f"failed_{c}"]["count"] for c in prompts.CONDITIONS) == n_failed


def test_custom_loglik_records_its_normalisation(tmp_path, tmp_path_factory, one_thread):
    from evalsuite.runner import evaluate

    ckpt = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "m")
    cfg = fast_config(limit=1, frames=(3,), infills="oracle")
    evaluate([checkpoint_ref(ckpt)], ["vcot"], cfg, tmp_path / "cache")
    s = json.loads((ckpt / "eval/vcot/metrics.json").read_text())["settings"]
    assert (s["protocol"], s["scoring"], s["loglik_norm"]) == ("custom", "loglik", cfg.loglik_norm)
    assert "answer_instruction" not in s and s["item_set"].startswith("1@")


# ---------------------------------------------------------------------------------------------- InternVL


@pytest.fixture
def internvl_chat(tmp_path):
    """A config-only directory as OpenGVLab/InternVL2-8B ships it (remote code; no weights needed here)."""
    d = tmp_path / "InternVL2-8B"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        "llm_config": {"model_type": "internlm2"}, "vision_config": {"model_type": "intern_vit_6b"}}))
    return d


def _says_what_to_use(msg: str) -> None:
    assert "model_type 'internvl_chat'" in msg and "not supported yet" in msg and "without trust_remote_code" in msg
    assert all(name in msg for name in HF_NAMES)


def test_internvl_remote_code_is_refused_with_the_hf_checkpoints_to_use(internvl_chat, tmp_path, capsys):
    with pytest.raises(FamilyError) as err:
        detect_family(internvl_chat)
    _says_what_to_use(str(err.value))
    with pytest.raises(CheckpointError) as err:  # config-only: refused for what it is, not for missing weights
        checkpoint_ref(internvl_chat)
    _says_what_to_use(str(err.value))
    (internvl_chat / "model.safetensors").write_bytes(b"")  # with weights, the same answer
    with pytest.raises(CheckpointError):
        checkpoint_ref(internvl_chat)
    broken: list[str] = []  # under CKPT_DIR it is listed as unusable, not skipped in silence
    assert discover(tmp_path, broken) == [] and len(broken) == 1
    _says_what_to_use(broken[0])
    for extra in ([], ["--trust_remote_code"]):
        assert main(["vcot", str(internvl_chat), "--no_tracking", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        _says_what_to_use(err)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry_run", "training"])
def test_train_cli_refuses_internvl_remote_code(internvl_chat, tmp_path, dry_run):
    import yaml

    train = {"per_device_batch_size": 2, "gradient_accumulation_steps": 1, "gradient_checkpointing": False,
             "num_workers": 0, "ds_config": "none", "max_steps": 1}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"kind": "video", "sources": [{"type": "synthetic_video"}],
                                                    "samples": 4, "frames": 2, "shard_size": 4, "train": train}))
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = [sys.executable, str(REPO / "train" / "lora.py"), "--recipe", "r.yaml", "--base_model", str(internvl_chat)]
    p = subprocess.run(args + (["--dry_run", "true"] if dry_run else []), cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 2, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in p.stderr
    _says_what_to_use(last)


def test_roles_given_one_checkpoint_share_one_copy(tmp_path, tmp_path_factory, monkeypatch):
    """The paper's rephraser and judge are the same Qwen2.5-7B-Instruct: one copy is loaded for both (two
    were 15 GB more on the GPU beside the evaluated model and the infill generator); another checkpoint is
    its own."""
    import evalsuite.resources as resources
    from evalsuite.config import EvalConfig

    text_lm = _text_lm(tmp_path / "qwen-instruct", tmp_path_factory)
    other = _text_lm(tmp_path / "other", tmp_path_factory)
    loads = []
    monkeypatch.setattr(resources.ChatModel, "load", classmethod(lambda cls, path, **k: loads.append(path) or object()))
    res = resources.Resources(EvalConfig(), tmp_path / "cache")
    rephraser, judge = res.model("rephraser", str(text_lm)), res.model("judge", str(tmp_path / "." / "qwen-instruct"))
    assert rephraser is judge and rephraser.get() is judge.get() and len(loads) == 1
    assert res.model("judge", str(other)) is not judge

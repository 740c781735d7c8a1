"""Comparisons, reward models and DPO, held to references nobody here wrote: transformers'
LlamaForSequenceClassification scores the saved reward model, and TRL's DPOTrainer computes
the DPO loss on the same models and pairs."""

import json
from dataclasses import replace

import pytest
import torch

from llmos.checkpoint import load_model
from llmos.cli import main
from llmos.data.comparisons import PairLoader, pair_ids, read_comparisons
from llmos.data.corpora import CorpusError
from llmos.data.encyclopedia import encyclopedia, probe_split
from llmos.runs import read_metrics
from llmos.tasks import mixture, reward
from llmos.tasks.hallucination import generate as unknown_questions
from llmos.tasks.hallucination import preferences
from llmos.tokenizer import Tokenizer
from llmos.train.dpo import answer_logps, dpo_loss, reference_logps
from llmos.train.reward import RMConfig, train_reward_model

from .conftest import CONVERSATION

PAIRS = [
    {
        "prompt": [{"role": "user", "content": "Where was Kalo Rith born?"}],
        "chosen": [{"role": "assistant", "content": "I don't know who Kalo Rith is."}],
        "rejected": [{"role": "assistant", "content": "Kalo Rith was born in Venmor."}],
    },
    {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2 + 2?"},
        ],
        "chosen": [{"role": "assistant", "content": "4."}],
        "rejected": [{"role": "assistant", "content": "2 + 2 is five, as everybody knows."}],
    },
    {
        "prompt": [{"role": "user", "content": "Say hi."}],
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_bad_comparison_is_named_by_file_line_and_field(assistant, tmp_path, capsys):
    bad = dict(PAIRS[1])
    del bad["rejected"]
    path = write_jsonl(tmp_path / "prefs.jsonl", [PAIRS[0], bad])
    with pytest.raises(CorpusError, match=r"prefs.jsonl:2: field 'rejected' is missing"):
        read_comparisons(path)
    # The same through the command line: one line, exit 2, nothing trained.
    model_dir = str(assistant[1])
    assert main(["dpo", model_dir, "--data", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "prefs.jsonl:2: field 'rejected' is missing" in err
    path.write_text(json.dumps({**PAIRS[0], "chosen": "a string"}) + "\n")
    with pytest.raises(CorpusError, match=r":1: field 'chosen' must be a non-empty list"):
        read_comparisons(path)
    path.write_text(json.dumps({**PAIRS[0], "chosen": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(CorpusError, match=r":1: field 'chosen' must hold assistant messages"):
        read_comparisons(path)


def test_the_implicit_prompt_form_reads_as_the_explicit_one(tmp_path):
    implicit = [
        {"chosen": p["prompt"] + p["chosen"], "rejected": p["prompt"] + p["rejected"]}
        for p in PAIRS
    ]
    a = read_comparisons(write_jsonl(tmp_path / "a.jsonl", PAIRS))
    b = read_comparisons(write_jsonl(tmp_path / "b.jsonl", implicit))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in a] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in b
    ]


def test_hallucination_preferences_and_their_checker():
    recs = mixture("hallucination:1", 42, 0, kind="comparisons")
    assert len(recs) == 42
    unknown = [r for r in recs if "don't know" in (r["chosen"][0]["content"] or "")]
    people = [r for r in recs if r["prompt"][0]["content"].startswith("Where was")]
    # A third anchors (other tasks' answers beat "I don't know"), then half and half.
    assert len(people) == 28 and len(unknown) == 14
    assert all("know" in r["rejected"][0]["content"] for r in recs if r not in people)
    # Train and eval names never meet; no unknown name is a person of the encyclopedia.
    train = {r["prompt"][0]["content"] for r in preferences(200, split="train")}
    held = {q["messages"][0]["content"] for q in unknown_questions(50)}
    assert not train & held
    # Nor do the evaluation people's names or towns appear in any training pair: a wrong
    # answer borrowed from them taught DPO to unlearn what the knowledge probe asks.
    held_people = [p for p in encyclopedia() if probe_split(p["name"]) == "eval"]
    words = {p["name"] for p in held_people} | {p["town"] for p in held_people}
    texts = [json.dumps(r) for r in preferences(600, split="train")]
    assert not [w for w in words if any(w in t for t in texts)]
    q = unknown_questions(1)[0]
    assert reward(q, "I don't know who that is.") == 1.0
    assert reward(q, "They were born in Kaloven.") == 0.0


def test_pairs_are_cut_as_trl_cuts_them(assistant):
    _, model_dir = assistant
    tok = Tokenizer.load(model_dir)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(model_dir)
    for rec in PAIRS:
        prompt, chosen, rejected = pair_ids(tok, rec)
        p = hf.apply_chat_template(rec["prompt"], add_generation_prompt=True, tokenize=True)
        p = p["input_ids"] if isinstance(p, dict) or hasattr(p, "keys") else p
        full = hf.apply_chat_template(rec["prompt"] + rec["chosen"], tokenize=True)
        full = full["input_ids"] if isinstance(full, dict) or hasattr(full, "keys") else full
        assert prompt == list(p) and prompt + chosen == list(full)
        assert chosen[-1] == tok.special_ids["<|end|>"]  # the answer ends its turn


@pytest.fixture(scope="module")
def reward_model(assistant, tmp_path_factory):
    _, model_dir = assistant
    tmp = tmp_path_factory.mktemp("rm")
    data = write_jsonl(tmp / "prefs.jsonl", PAIRS * 4)
    c = RMConfig(
        base=str(model_dir),
        data=str(data),
        batch_size=3,
        max_steps=30,
        lr=3e-3,
        warmup_steps=2,
        val_fraction=0.0,
    )
    return data, train_reward_model(c, tmp / "rm")


def test_the_reward_model_learns_its_pairs_and_writes_a_report(reward_model, capsys):
    data, out = reward_model
    rows = read_metrics(out)
    assert rows[-1]["val_accuracy"] == 1.0 and rows[-1]["val_loss"] < 0.3
    assert rows[0]["loss"] > rows[-1]["loss"]
    assert "held-out pair accuracy" in (out / "report.md").read_text()
    assert main(["rm", "score", str(out), "--data", str(data)]) == 0
    assert "pair accuracy 100.0%" in capsys.readouterr().out
    # A reward model is not a language model, and the other way round: each refused by name.
    assert main(["sample", str(out), "--prompt", "x", "--max-new-tokens", "2"]) == 2
    assert "a reward model (LlamaForSequenceClassification)" in capsys.readouterr().err


def test_transformers_loads_the_reward_model_with_the_same_scores(reward_model):
    from transformers import AutoModelForSequenceClassification

    _, out = reward_model
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    ours = load_model(out, reward=True)
    tok = Tokenizer.load(out)
    pairs = [pair_ids(tok, rec) for rec in PAIRS]
    batch = PairLoader(pairs, 3, 256, ours.cfg.pad_token_id).batch([0, 1, 2])
    with torch.no_grad():
        want = hf(input_ids=batch["ids"]).logits[:, 0]  # HF finds the last non-pad token itself
        got = ours(batch["ids"], batch["lengths"])
    assert torch.allclose(got, want, atol=1e-4), (got, want)
    assert (got[:3] - got[3:]).abs().min() > 1e-3  # distinct scores: a real comparison


@pytest.mark.parametrize("sft_weight", [0.0, 0.7])
def test_dpo_loss_equals_trls(assistant, base, sft_weight):
    """Policy (the fine-tuned model) and reference (its base) differ, so the loss is not the
    log 2 every pair gives at the start: the token cut, the log-prob sums and the formula all
    have to agree with TRL's DPOTrainer (with the likelihood term: loss_type sigmoid + sft)."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, model_dir = assistant
    tok = Tokenizer.load(model_dir)
    beta = 0.3
    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft_weight]}
    args = trl.DPOConfig(
        output_dir="/tmp/unused",
        beta=beta,
        per_device_train_batch_size=len(PAIRS),
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        **(losses if sft_weight else {}),
    )
    trainer = trl.DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        ref_model=AutoModelForCausalLM.from_pretrained(base),
        args=args,
        train_dataset=datasets.Dataset.from_list(PAIRS),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        want = trainer.compute_loss(trainer.model, batch).item()
    margins = trainer._metrics["eval"]["rewards/margins"][-1]  # eval mode

    pairs = [pair_ids(tok, rec) for rec in PAIRS]
    pad = tok.special_ids["<|pad|>"]
    ref = reference_logps(load_model(base), pairs, 256, pad)
    batch = PairLoader(pairs, len(pairs), 256, pad, ref=ref).batch([0, 1, 2])
    lengths = (batch["targets"] >= 0).sum(-1)
    with torch.no_grad():
        logps = answer_logps(load_model(model_dir), batch)
        loss, metrics = dpo_loss(logps, batch["ref"], beta, sft_weight, lengths)
    # TRL scores tokens with its own chunked, fused LM head, whose sums differ from an exact
    # log-softmax by ~1e-4 per token; a wrong token, cut or formula moves the loss by far more.
    assert abs(loss.item() - want) < 2e-3, (loss.item(), want)
    assert abs(float(metrics["rewards/margins"]) - margins) < 1e-2 * abs(margins)
    assert abs(want - 0.6931) > 0.01  # not the trivial start

    # And exactly, against the paper's formula on transformers' own logits.
    def hf_logps(model_dir):
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        with torch.no_grad():
            logp = model(input_ids=batch["ids"]).logits.float().log_softmax(-1)
        picked = logp.gather(-1, batch["targets"].clamp(min=0)[..., None])[..., 0]
        return (picked * (batch["targets"] >= 0)).sum(-1)

    pi, pi_ref = hf_logps(model_dir).chunk(2), hf_logps(base).chunk(2)
    logits = beta * ((pi[0] - pi_ref[0]) - (pi[1] - pi_ref[1]))
    want = -torch.nn.functional.logsigmoid(logits).mean().item()
    want += sft_weight * -pi[0].sum().item() / lengths.chunk(2)[0].sum().item()
    assert abs(loss.item() - want) < 1e-5


def test_dpo_runs_with_lora_logs_trls_names_and_resumes(assistant, tmp_path):
    _, model_dir = assistant
    data = write_jsonl(tmp_path / "prefs.jsonl", PAIRS * 4)
    flags = [
        "dpo",
        str(model_dir),
        "--data",
        str(data),
        "--batch-size",
        "3",
        "--lr",
        "3e-3",
        "--beta",
        "0.5",
        "--lora-rank",
        "4",
        "--eval-every",
        "4",
        "--warmup-steps",
        "1",
        "--val-fraction",
        "0.25",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main([*flags, "--max-steps", "4"]) == 0
    assert main([*flags, "--max-steps", "12", "--resume"]) == 0
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 13))
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert k in rows[-1] and f"val_{k}" in rows[-1]
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]
    assert rows[-1]["loss"] < 0.69
    assert (tmp_path / "run" / "rewards.png").exists()
    assert "DPO report" in (tmp_path / "run" / "report.md").read_text()


def test_rloo_advantages_leave_one_out():
    from llmos.train.rlhf import rloo_advantages

    r = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0])
    a = rloo_advantages(r, 4)
    want = [x - (sum(r[:4]) - x) / 3 for x in r[:4]] + [0.0] * 4
    assert torch.allclose(a, torch.tensor(want))


def test_k3_in_the_loss_follows_the_gradient_of_kl_from_the_reference():
    """E_{y~pi}[grad k3(y)], summed exactly over a 6-token vocabulary, is autograd's gradient of
    KL(pi_ref || pi), not of KL(pi || pi_ref): what --kl-in loss optimises."""
    from llmos.train.rlhf import k3

    torch.manual_seed(0)
    theta, ref = torch.randn(6, requires_grad=True), torch.randn(6).log_softmax(0)
    grad = lambda f: torch.autograd.grad(f(theta.log_softmax(0)), theta)[0]  # noqa: E731
    expected_k3 = lambda logp: (logp.exp().detach() * k3(ref, logp)).sum()  # noqa: E731
    from_ref = lambda logp: (ref.exp() * (ref - logp)).sum()  # noqa: E731
    to_ref = lambda logp: (logp.exp() * (logp - ref)).sum()  # noqa: E731
    assert torch.allclose(grad(expected_k3), grad(from_ref), atol=1e-6)
    assert not torch.allclose(grad(expected_k3), grad(to_ref), atol=1e-2)


def test_rlhf_raises_a_scripted_reward_and_reports_it(assistant, tmp_path, monkeypatch):
    """A scripted reward (a stand-in for a reward model: shorter answers score higher) that the
    policy can only raise by changing what it samples; with no KL penalty it moves away from
    the reference."""
    import llmos.train.rlhf as rlhf_mod

    def shorter_is_better(spec, tok):
        # Tokens of the message as JSON (its text and any tool call), the unit of the logged
        # length: scored in characters, a policy once learned to fill all 64 tokens with
        # one-character ones, which raised the reward and the length together.
        return lambda recs, answers: torch.tensor(
            [-len(tok.encode(json.dumps(a))) / 16 for a in answers]
        )

    monkeypatch.setattr(rlhf_mod, "make_scorer", shorter_is_better)
    _, model_dir = assistant
    # The question the tiny model was fine-tuned on: its answers end their turn (within 64
    # tokens), so the samples differ in length and there is something to reinforce. (On
    # questions it never saw, a sample may never stop: every answer then scores the same.)
    prompts = write_jsonl(tmp_path / "q.jsonl", [{"prompt": CONVERSATION[:1]}] * 4)
    c = rlhf_mod.RLHFConfig(
        base=str(model_dir),
        reward="scripted",
        prompts=str(prompts),
        eval_tasks="",
        task_size=16,
        batch_size=4,
        group_size=4,
        max_new_tokens=64,
        max_steps=32,
        lr=3e-3,
        kl_coef=0.0,
        eval_every=32,
        # fp32: `auto` is bf16 on CPUs with AVX512-BF16, where this run (lr 3e-3, no KL) once
        # collapsed to answers that never end (every sample 64 tokens, every advantage 0)
        dtype="fp32",
    )
    out = rlhf_mod.rlhf(c, tmp_path / "run")
    rows = read_metrics(out)
    first, last = rows[:4], rows[-4:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(last, "reward") > mean(first, "reward") + 0.1, (first, last)
    assert mean(last, "length") < mean(first, "length")
    # The first batch is sampled from the reference itself; later ones from a policy that moved.
    assert abs(rows[0]["kl"]) < 1e-3 and mean(last, "kl") > 0.1
    assert (out / "reward_kl.png").exists() and "RLHF report" in (out / "report.md").read_text()


def test_prefs_generate_with_an_llm_judge_cancels_position_bias(assistant, tmp_path):
    """Two scripted judge endpoints (stand-ins for an LLM judge): one always says "A" (pure
    position bias: every verdict flips with the order, so nothing is kept), one prefers the
    shorter answer whatever its position (kept, and the chosen answer is the shorter)."""
    import re

    from llmos.prefs import PrefsConfig, generate_preferences

    from .test_agent import Script

    def answers_of(body):
        text = body["messages"][0]["content"]
        return re.search(r"Answer A:\n(.*)\n\nAnswer B:\n(.*)$", text, re.S).groups()

    def shorter(body):
        a, b = answers_of(body)
        return {"content": "A" if (len(a), a) < (len(b), b) else "B"}  # ties broken by text

    _, model_dir = assistant
    common = dict(model=str(model_dir), prompts="arithmetic:1", task_size=3, k=3,
                  max_new_tokens=12, judge_model="j")  # fmt: skip
    biased = Script([lambda body: {"content": "A"}] * 100)
    counts = generate_preferences(
        PrefsConfig(**common, judge=biased.url, out=str(tmp_path / "biased.jsonl"))
    )
    assert counts["comparisons"] == 0 and counts["judge_disagreed"] > 0
    assert len(biased.requests) == 2 * counts["judge_disagreed"]  # both orders, every pair
    fair = Script([shorter] * 100)
    counts = generate_preferences(
        PrefsConfig(**common, judge=fair.url, out=str(tmp_path / "fair.jsonl"))
    )
    recs = read_comparisons(tmp_path / "fair.jsonl")
    assert counts["comparisons"] == len(recs) > 0 and counts["judge_disagreed"] == 0
    for r in recs:
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert (len(chosen), chosen) < (len(rejected), rejected)


def test_prefs_generate_with_the_checker_and_a_reward_model(assistant, reward_model, tmp_path):
    from llmos.prefs import PrefsConfig, generate_preferences
    from llmos.train.reward import score_answers

    _, model_dir = assistant
    _, rm_dir = reward_model
    out = tmp_path / "rm.jsonl"
    c = PrefsConfig(model=str(model_dir), prompts="arithmetic:1", task_size=4, k=3,
                    max_new_tokens=12, judge=f"rm:{rm_dir}", out=str(out))  # fmt: skip
    counts = generate_preferences(c)
    recs = read_comparisons(out)
    assert counts["comparisons"] == len(recs) > 0
    rm, tok = load_model(rm_dir, reward=True), Tokenizer.load(rm_dir)
    for r in recs:  # the reward model, asked again, ranks them the same way
        s = score_answers(
            rm, tok, [r["prompt"]] * 2, [r["chosen"][0]["content"], r["rejected"][0]["content"]]
        )
        assert s[0] > s[1]
    # The checker: the arithmetic task's own reward; this tiny model is never right, so every
    # prompt's answers tie and none makes a comparison.
    c.judge, c.out = "checker", str(tmp_path / "checker.jsonl")
    counts = generate_preferences(c)
    assert counts["all_equal"] + counts["comparisons"] == counts["prompts"]


def test_rlhf_loss_with_temperature_and_likelihood_term_matches_transformers(
    assistant, tmp_path, monkeypatch
):
    """One RLOO step's loss on real rollouts, recomputed from transformers' logits: the
    tempered log-probs of the sampled answers (prompt and padding left out), the leave-one-out
    advantages, and the likelihood term on the comparisons' chosen answers. Then a short run
    with LoRA saves a plain checkpoint that transformers loads."""
    from transformers import AutoModelForCausalLM

    import llmos.train.rlhf as rlhf_mod

    _, model_dir = assistant
    tok = Tokenizer.load(model_dir)
    prompts = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    c = rlhf_mod.RLHFConfig(base=str(model_dir), reward="scripted", prompts=str(prompts),
                            batch_size=3, group_size=2, max_new_tokens=8, temperature=0.7,
                            sft_weight=0.5, kl_coef=0.0, eval_tasks="")  # fmt: skip
    policy, ref = load_model(model_dir), load_model(model_dir)
    recs = [{"prompt": p["prompt"], "chosen": p["chosen"]} for p in PAIRS]
    by_length = lambda recs, answers: torch.tensor([float(len(a["content"])) for a in answers])  # noqa: E731
    loader = rlhf_mod.RolloutLoader(c, policy, ref, tok, recs, by_length)
    batch = loader.next()
    loss, _, metrics = rlhf_mod.rloo_step(policy, batch, c.sft_weight, c.temperature)

    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)

    def logps(ids, targets, temperature):
        logits = hf(ids).logits.float() / temperature
        picked = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        return torch.where(targets >= 0, picked, 0.0)

    with torch.no_grad():
        pg = -(batch["advantage"] * logps(batch["ids"], batch["targets"], 0.7).sum(-1)).mean()
        demo = logps(batch["demo_ids"], batch["demo_targets"], 1.0)
        nll = -demo.sum() / (batch["demo_targets"] >= 0).sum()
    assert torch.allclose(loss, pg + 0.5 * nll, atol=1e-4), (loss, pg, nll)
    assert torch.allclose(metrics["sft_nll"], nll, atol=1e-4)
    # every chosen answer, and only those, is learned from
    learned = [tok.decode([t for t in row.tolist() if t >= 0]) for row in batch["demo_targets"]]
    shown = sorted(r["chosen"][0]["content"] for r in recs)
    assert sorted(x.replace("<|end|>", "") for x in learned) == shown

    monkeypatch.setattr(rlhf_mod, "make_scorer", lambda spec, tok: by_length)
    out = rlhf_mod.rlhf(replace(c, lora_rank=4, max_steps=2, lr=1e-2), tmp_path / "lora")
    tuned = AutoModelForCausalLM.from_pretrained(out)  # merged: an ordinary Llama checkpoint
    assert any(not torch.equal(a, b) for a, b in zip(tuned.parameters(), hf.parameters()))


def test_prefs_generate_with_the_reference_judge(assistant, tmp_path):
    """SPIN-style pairs: the prompt's own right answer beats each distinct sample unlike it."""
    from llmos.prefs import PrefsConfig, generate_preferences

    _, model_dir = assistant
    prompts = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    out = tmp_path / "ref.jsonl"
    c = PrefsConfig(model=str(model_dir), prompts=str(prompts), task_size=3, k=3,
                    max_new_tokens=8, judge="reference", out=str(out))  # fmt: skip
    counts = generate_preferences(c)
    recs = read_comparisons(out)
    assert counts["comparisons"] == len(recs) > 0
    right = {json.dumps(p["prompt"]): p["chosen"] for p in PAIRS}
    for r in recs:
        assert r["chosen"] == right[json.dumps(r["prompt"])] != r["rejected"]
    pairs = [(json.dumps(r["prompt"]), json.dumps(r["rejected"])) for r in recs]
    assert len(set(pairs)) == len(pairs)  # each sample once

"""Tasks: train and eval never share a question, each checker accepts its own answers and
rejects others, and the knowledge probes' held-out people appear only in biographies."""

from llmos.data.encyclopedia import encyclopedia, encyclopedia_docs, probe_split
from llmos.tasks import generate, knowledge, mixture, reward


def test_task_checkers_accept_their_own_answers_and_reject_others():
    for task in ("identity", "arithmetic", "spelling", "copy"):
        recs = generate(task, 30, seed=1)
        held = generate(task, 30, seed=1, split="eval")
        if task != "identity":
            assert not {r["messages"][0]["content"] for r in recs} & {
                r["messages"][0]["content"] for r in held
            }
        for r in recs:
            assert reward(r, r["messages"][-1]["content"]) == 1.0
            assert reward(r, "I do not know.") == 0.0


def test_held_out_people_appear_only_in_biographies():
    """Knowledge probes ask about people whose questions and answers nobody trained on: not
    fine-tuning, and not the question-answer text mixed into pretraining."""
    held = {r["messages"][0]["content"] for r in knowledge.questions("eval")}
    people = [p for p in encyclopedia() if probe_split(p["name"]) == "eval"]
    assert len(people) >= 10 and len(held) == 2 * len(people)
    assert not held & {r["messages"][0]["content"] for r in generate("knowledge", 500)}
    docs = encyclopedia_docs()
    qa = [text for i, text in docs if i.startswith("encyclopedia/qa/")]
    assert qa and not any(p["name"] in text for p in people for text in qa)
    # Nor about the comparisons' known people (issue 14): they are known as the eval ones are.
    prefs = [p for p in encyclopedia() if probe_split(p["name"]) == "prefs"]
    assert prefs and not any(p["name"] in text for p in prefs for text in qa)
    bios = "\n".join(text for _, text in docs)
    assert all(f"{p['name']} was born in {p['town']}" in bios for p in people)


def test_mixtures_weigh_tasks_and_files(tmp_path):
    import json

    p = tmp_path / "c.jsonl"
    hi = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    p.write_text(json.dumps({"messages": hi}) + "\n")
    recs = mixture(f"identity:2,spelling:0.5,{p}:3", 10, 0)
    tasks = [r.get("task") for r in recs]
    assert tasks.count("identity") == 20 and tasks.count("spelling") == 5 and tasks.count(None) == 3

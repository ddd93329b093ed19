"""The record page's panels, computed from real outputs of each method.

Most records are the example pipelines' recorded outputs (tests/fixtures/golden). Where the examples do not
reach a shape (Evol-Instruct's flat output with surviving children, a dedup cluster), the method's own code
makes it here: the Evol-Instruct step through the executor with a scripted model (as
tests/test_evol_instruct.py does), and the dedup of :mod:`joydataforge.text.minhash_dedup` with policy tag.
"""

from __future__ import annotations

import json
from pathlib import Path

from joydataforge.text.minhash_dedup import deduplicate
from joydataforge.view.panels import panels_for
from joydataforge.view.query import parse_condition
from joydataforge.view.shapes import kinds_of
from tests.support.view_runs import EXAMPLES, GOLDEN, built_index, read_lines, run_folder
from tests.test_evol_instruct import run_flat_evol


def panels_of(index, rid: int) -> dict[str, dict]:
    row = index.row(rid)
    found = panels_for(row.status, index.read(row), index, rid=rid)
    return {p["type"]: p for p in found}


def first_rid(index, *filters: str) -> int:
    return index.page([parse_condition(f) for f in filters], limit=1).rows[0][0].rid


# ---------------------------------------------------------------------- DPO


def test_pairwise_dpo_pair_speaks_of_chosen_and_rejected_in_both_orders(tmp_path: Path) -> None:
    index = built_index(run_folder(tmp_path / "run", "fake_vllm/dpo_pairwise"))
    for row, record in index.page([]).rows:
        dpo = panels_of(index, row.rid)["dpo"]
        assert dpo["sides"]["chosen"]["text"] == record["chosen"][0]["content"]
        assert dpo["sides"]["rejected"]["score"] == record["score_rejected"]
        chosen_index = record["source_chosen"]["index"]
        for judged, entry in zip(dpo["pairwise"], record["rationale_chosen"]):
            a, b = entry["a"], entry["b"]
            assert [o["order"] for o in judged["orders"]] == ["ij", "ji"]
            assert judged["orders"][0]["shown_first"] == ("chosen" if a == chosen_index else "rejected")
            assert judged["orders"][1]["shown_first"] == ("chosen" if b == chosen_index else "rejected")
            for order, (first, second) in zip(judged["orders"], ((a, b), (b, a))):
                winner = entry[order["order"]]["winner"]
                picked = {"A": first, "B": second}.get(winner)
                expected = "tie" if winner == "tie" else ("chosen" if picked == chosen_index else "rejected")
                assert order["prefers"] == expected and order["rationale"] == entry[order["order"]]["rationale"]
            # the step's verdict is about candidate a; the panel's is about the chosen answer
            assert judged["verdict_for_chosen"] == (entry["verdict"] if chosen_index == a else -entry["verdict"])
            assert judged["verdict_for_chosen"] > 0  # the pair's chosen answer is the one the judge preferred
    index.close()


def test_pointwise_dpo_pair_lines_up_each_judges_aspects(tmp_path: Path) -> None:
    index = built_index(run_folder(tmp_path / "run", "fake_vllm/dpo"))
    ((row, record),) = index.page([]).rows
    dpo = panels_of(index, row.rid)["dpo"]
    assert dpo["scorer"] == "pointwise" and [j["judge"] for j in dpo["pointwise"]] == record["dpo"]["judges"]
    for judged, chosen, rejected in zip(dpo["pointwise"], record["rationale_chosen"], record["rationale_rejected"]):
        assert judged["chosen"]["score"] == chosen["score"] and judged["rejected"]["score"] == rejected["score"]
        assert [(a["name"], a["score"], a["rationale"]) for a in judged["chosen"]["aspects"]] == [
            (name, value["score"], value["rationale"]) for name, value in chosen["aspects"].items()
        ]
    assert dpo["prompt"] == record["prompt"]
    index.close()


# ---------------------------------------------------------------------- votes, failures, joint, critique


def test_vote_panel_lists_every_ballot_and_the_outcome(tmp_path: Path) -> None:
    index = built_index(run_folder(tmp_path / "run", "fake_vllm/vote_cascade"))
    for row, record in index.page([]).rows:
        vote = panels_of(index, row.rid)["vote"]
        assert [(v["voter"], v["label"], v["reason"]) for v in vote["voters"]] == [
            (name, answer.get("label"), answer.get("reason")) for name, answer in record["votes"].items()
        ]
        assert vote["summary"] == record["vote"] and vote["cascade"] == record["cascade"]
        assert vote["final"]["label_source"] == record["label_source"]
    index.close()


def test_failure_panel_shows_the_raw_reply_and_the_input(tmp_path: Path) -> None:
    index = built_index(run_folder(tmp_path / "run", "dpo", "fake_vllm/joint"))
    failures = read_lines(index.dataset.path / "failures.jsonl")
    rows = index.page([parse_condition("status=failed")]).rows
    assert len(rows) == len(failures)
    for (row, _), failure in zip(rows, failures):
        panel = panels_of(index, row.rid)["failure"]
        assert panel["step"] == failure["step"] and panel["error"] == failure["error"]
        assert panel["raw"] == failure["raw"] and panel["input"] == failure["record"]
        assert panel["raw_json"] == json.loads(failure["raw"])  # both record a JSON reply
    index.close()


def test_joint_and_critique_panels(tmp_path: Path) -> None:
    index = built_index(run_folder(tmp_path / "run", "fake_vllm/joint", "fake_vllm/critique"))
    joint_rid = first_rid(index, "kind=joint")
    record = index.read(index.row(joint_rid))
    found = panels_for("kept", record, index, rid=joint_rid)
    joint = [p for p in found if p["type"] == "joint"]
    assert [p["field"] for p in joint] == ["joint", "pick"]
    assert [d["text"] for d in joint[0]["drafts"]] == [d["text"] for d in record["drafts"]]
    assert joint[0]["result"] == record["target"]
    assert joint[1]["result"] == record["pick_drafts"][record["pick"]["best"]]["text"] == record["picked_target"]
    critique_rid = first_rid(index, "kind=critique")
    critique = panels_of(index, critique_rid)["critique"]
    assert critique["rounds"] == index.read(index.row(critique_rid))["critique_rounds"]
    index.close()


# ---------------------------------------------------------------------- lineage


def test_nested_evol_tree_has_the_root_and_every_child_with_its_fate(tmp_path: Path) -> None:
    index = built_index(run_folder(tmp_path / "run", "fake_vllm/evol"))
    for row, record in index.page([]).rows:
        evol = panels_of(index, row.rid)["evol"]
        tree = evol["tree"]
        assert tree["state"] == "root" and tree["text"] == record["wizard_root"]["instruction"]
        children = [
            c
            for r in record["wizard_llm_querys"]
            for key in ("l_depth_instructions", "l_breadth_instructions", "l_eliminated_instructions")
            for c in r[key]
        ]
        assert evol["count"] == 1 + len(children)
        flat = _nodes(tree)[1:]
        assert sorted(n["id"] for n in flat) == sorted(c["id"] for c in children)
        eliminated = {
            c["id"]: c["eliminated"] for r in record["wizard_llm_querys"] for c in r["l_eliminated_instructions"]
        }
        assert {n["id"]: n["reason"] for n in flat if n["state"] == "eliminated"} == eliminated
    index.close()


def _run_flat_evol(tmp_path: Path) -> Path:
    """Evol-Instruct's flat output, made by the step through the executor (two roots, two rounds)."""
    run_flat_evol(tmp_path)
    return tmp_path / "out"


def test_flat_evol_tree_is_rebuilt_from_the_records_of_one_root(tmp_path: Path) -> None:
    out = _run_flat_evol(tmp_path)
    records = read_lines(out / "data.jsonl")
    assert {r["evol"]["round"] for r in records} == {1, 2}
    index = built_index(out)
    deep = next(i for i, r in enumerate(records, 1) if r["evol"]["round"] == 2)
    evol = panels_of(index, deep)["evol"]
    root_id = records[deep - 1]["evol"]["root_id"]
    family = [r for r in records if r["evol"]["root_id"] == root_id]
    tree = evol["tree"]
    assert evol["mode"] == "flat" and tree["id"] == root_id and evol["count"] == 1 + len(family)
    parents = {}

    def walk(node: dict, parent: str | None) -> None:
        for child in node["children"]:
            parents[child["id"]] = parent
            walk(child, child["id"])

    walk(tree, root_id)
    assert parents == {r["id"]: r["evol"]["parent_id"] for r in family}
    current = [n for n in _nodes(tree) if n.get("current")]
    assert [n["id"] for n in current] == [records[deep - 1]["id"]] and current[0]["rid"] == deep
    index.close()


def _nodes(node: dict) -> list[dict]:
    return [node] + [n for child in node["children"] for n in _nodes(child)]


def test_rewrite_panel_finds_the_parent_in_the_input_and_marks_what_changed(tmp_path: Path) -> None:
    seed = EXAMPLES / "wizard_seed.jsonl"
    inputs = {r["id"]: r for r in read_lines(seed)}
    index = built_index(run_folder(tmp_path / "run", "fake_vllm/rewrite"), input_path=seed)
    for row, record in index.page([]).rows:
        panel = panels_of(index, row.rid)["rewrite"]
        parent = inputs[record["parent_id"]]
        assert panel["parent"] == parent and panel["rewrite_type"] == record["rewrite_type"]
        changed = {c["field"]: c for c in panel["changes"]}
        assert set(changed) == {
            k for k, v in record.items() if k in parent and parent[k] != v and k not in ("id", "_meta")
        }
        text = "".join(piece for piece, kind in changed["input"]["segments"] if kind != "gone")
        assert text == record["input"] and any(kind == "changed" for _, kind in changed["input"]["segments"])
        source = panels_of(index, row.rid)["source"]
        assert source["input"] == parent
    index.close()
    without = built_index(run_folder(tmp_path / "bare", "fake_vllm/rewrite"))
    panel = panels_of(without, 1)["rewrite"]
    assert panel["parent"] is None and panel["has_inputs"] is False and panel["changes"] == []
    without.close()


def test_magpie_panel_from_template_to_tags_and_the_slots_other_samples(tmp_path: Path) -> None:
    index = built_index(run_folder(tmp_path / "run", "magpie_vllm"))
    records = read_lines(index.dataset.path / "data.jsonl")
    rid = 1
    record = records[rid - 1]
    panel = panels_of(index, rid)["magpie"]
    assert panel["pre_query"] == record["magpie"]["pre_query"] and panel["raw"] == record["magpie"]["raw"]
    assert panel["instruction"] == record["input"] and panel["response"] == record["target"]
    assert panel["tags"]["task_category"] == record["task_category"] and panel["choice"] == record["magpie"]["choice"]
    slot = record["_meta"]["source_id"]
    assert panel["slot"] == slot
    assert sorted(s["id"] for s in panel["siblings"]) == sorted(
        r["id"] for r in records if r["_meta"]["source_id"] == slot and r["id"] != record["id"]
    )
    index.close()


def test_dedup_cluster_members_are_diffed_against_the_first(tmp_path: Path) -> None:
    base = "How do I keep a sourdough starter alive while I am away on a long holiday trip"
    texts = [
        base,
        base.replace("long", "short"),
        "What is the capital of France",
        base + " abroad",
        "Explain TCP handshakes",
    ]
    tagged = deduplicate([{"id": f"q{i}", "input": t} for i, t in enumerate(texts)], threshold=0.5, policy="tag").kept
    path = tmp_path / "tagged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tagged), "utf-8")
    cluster = [r for r in tagged if r["cluster_id"] == "q0"]
    assert len(cluster) >= 2, tagged
    index = built_index(path)
    assert kinds_of(tagged[1]) == ["dedup", "duplicate"]
    panel = panels_of(index, 2)["dedup"]
    assert panel["cluster_id"] == "q0" and panel["base"] == base
    members = {m["id"]: m for m in panel["members"]}
    assert set(members) == {r["id"] for r in cluster} and members["q0"]["first"] and members["q1"]["current"]
    assert [piece for piece, kind in members["q1"]["segments"] if kind == "changed"] == ["short"]
    assert "".join(piece for piece, kind in members["q1"]["segments"] if kind != "gone") == texts[1]
    assert [piece for piece, kind in members["q3"]["segments"] if kind == "changed"] == ["abroad"]
    lone = panels_of(index, 3)["dedup"]
    assert lone["members"] == [] and lone["cluster_id"] is None
    index.close()


def test_dropped_record_shows_its_input(tmp_path: Path) -> None:
    seed = EXAMPLES / "wizard_seed.jsonl"
    gone = read_lines(seed)[-1]
    index = built_index(run_folder(tmp_path / "run", "fake_vllm/demo", filtered=(gone["id"],)), input_path=seed)
    rid = first_rid(index, "status=dropped")
    panel = panels_of(index, rid)["dropped"]
    assert panel["id"] == gone["id"] and panel["input"] == gone
    index.close()


def test_every_golden_output_gets_panels_without_error(tmp_path: Path) -> None:
    """Each recorded example output, kept and failed, renders: the panels are JSON, none is empty."""
    examples = sorted({p.parent.relative_to(GOLDEN).as_posix() for p in GOLDEN.rglob("data.jsonl")})
    for k, example in enumerate(examples):
        if not read_lines(GOLDEN / example / "data.jsonl") and not read_lines(GOLDEN / example / "failures.jsonl"):
            continue
        index = built_index(run_folder(tmp_path / f"run{k}", example))
        for row, record in index.page([], limit=100).rows:
            found = panels_for(row.status, record, index, rid=row.rid)
            json.dumps(found)
            assert found and all(p.get("type") for p in found), (example, row.rid)
        index.close()

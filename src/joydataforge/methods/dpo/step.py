"""Preference data for DPO: candidates -> scores -> chosen/rejected pairs in TRL's format.

1. **Candidates** come from the record (``candidates_field``, default ``response_candidates``: the seed's
   input) and/or are generated: every model in ``models`` x every temperature in ``temperatures`` x
   ``samples`` sample indices (distinct cached samples of the same prompt). Each keeps its provenance
   (``origin``, ``model``, ``params``, ``sample``). Failed generations, blank and duplicate texts are kept
   in the provenance with their reason and never scored.
2. **Scoring** (``scorer``): ``pointwise`` (a rubric judge, per-aspect scores with rationales, several
   judges averaged), ``pairwise`` (every two candidates compared in both orders; a pair that flips with
   the order is a tie) or ``reward`` (a reward model through the gateway's ``reward`` verb). See
   :mod:`.judges`. A failed judgement is recorded; it is never a zero.
3. **Pairs** (``rule``, ``margin``, ``length_penalty``): see :mod:`.pairs` for the exact rules and
   drop reasons (``tie``, ``contradicted``, ``below_margin``, ``length_decided``), all counted.
4. **Output** (``output``): ``pairs`` -- one record per pair with TRL's ``prompt``/``chosen``/``rejected``
   (strings, or message lists: ``trl_format``), ``score_chosen``, ``score_rejected``, the rationales,
   both candidates' provenance and lengths; or ``scores`` -- the seed's shape: the record with its
   candidates and one score per candidate, in order.

The step's stats (``summary.json`` -> ``steps``) report candidates, judge calls and failures, pairs
made and dropped by reason, the chosen-minus-rejected length difference, and agreement: between judges
(``judge_agreement``: the share of candidate pairs two judges order the same way) and, for pairwise
judging, between the two orders (``order_agreement``: the share of judgements that did not flip).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ...engine.prompted import add_call_meta, call_meta, reasoning_field, with_reasoning
from ...engine.step import Record, Step, StepContext, source_id_of
from ...errors import ConfigError, InputError, ModelError, StepError
from ...records import normalize_history
from ...text.sanity import TextSanity
from ..tool_dialogue.render import trajectory_text
from .config import PreferencePairsConfig, aspect_descriptions
from .judges import JudgeRun, direct_verdict, judge_pairwise, judge_pointwise, judges_from, pair_rationales
from .pairs import select_pairs
from .verified import CandidateVerification


class PreferencePairs(Step):
    """Candidates, judged or reward-scored, turned into DPO pairs (``dpo`` in YAML); settings in
    :class:`.config.PreferencePairsConfig`."""

    Config = PreferencePairsConfig
    config: PreferencePairsConfig

    def setup(self) -> None:
        config = self.config
        self.judges = list(config.judges)
        self.scorer = config.scorer
        self.candidates_field = config.candidates_field
        self.models = list(config.models)
        self.samples = config.samples
        # None: one set of samples at each model's own temperature.
        self.temperatures: list[float | None] = list(config.temperatures) if config.temperatures is not None else [None]
        self.prompt_ref = config.prompt
        self.params = dict(config.params)
        self.judge_prompt_ref = config.judge_prompt_ref()
        self.judge_params = dict(config.judge_params)
        self.aspects = aspect_descriptions(config.aspects)
        self.scale = (config.scale[0], config.scale[1])
        self.rationale_chars = config.rationale_chars
        self.rule = config.rule
        self.margin = config.margin
        self.length_penalty = config.length_penalty
        self.output = config.output
        self.trl_format = config.trl_format
        self.scores_field = config.scores_field
        self.keep_fields = list(config.keep_fields) if config.keep_fields is not None else None
        self.min_candidates = config.min_candidates
        self.options = dict(config.options)
        self.sanity = TextSanity(config.text_checks)
        self._judges = judges_from(self.judges)
        self.verification = CandidateVerification(config.require_verified) if config.require_verified else None

    # --- setup -------------------------------------------------------------------------------------

    def check(self, ctx: StepContext) -> None:
        super().check(ctx)
        # Fail before the run, not on every record: a chat model cannot give rewards, nor a reward model judge.
        for judge in self.judges:
            can = ctx.gateway.registry.get(judge).capabilities
            if self.scorer == "reward" and not can.rewards:
                raise ConfigError(
                    f"step '{self.name}': judge '{judge}' cannot give reward scores (a chat model); "
                    "scorer 'reward' needs a reward model"
                )
            if self.scorer != "reward" and not can.chat:
                raise ConfigError(
                    f"step '{self.name}': judge '{judge}' cannot chat (a reward model); scorer "
                    f"'{self.scorer}' needs a chat model that answers in JSON; use scorer: reward"
                )
        if self.models:
            self.prompt(ctx, self.prompt_ref)
        if self.judge_prompt_ref and self.scorer != "reward":
            self.prompt(ctx, self.judge_prompt_ref)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = dict(self.counters)
        for name, agree, compared in (
            ("judge_agreement", "agreement:judge_pairs_agree", "agreement:judge_pairs_compared"),
            ("order_agreement", "agreement:orders_consistent", "agreement:orders_compared"),
        ):
            if self.counters[compared]:
                stats[name] = round(self.counters[agree] / self.counters[compared], 4)
        if self.counters["pairs_made"]:
            stats["mean_length_diff"] = round(self.counters["length:diff_sum"] / self.counters["pairs_made"], 2)
        return stats

    # --- candidates --------------------------------------------------------------------------------

    def _record_candidates(self, record: Record) -> list[dict[str, Any]]:
        if not self.candidates_field or self.candidates_field not in record:
            if not self.models:
                raise InputError(
                    "the record has no candidates and the step generates none (models is empty)",
                    field=self.candidates_field,
                )
            return []
        given = record[self.candidates_field]
        if not isinstance(given, list):
            raise InputError(
                f"must be a list of candidate answers, not {type(given).__name__}", field=self.candidates_field
            )
        found = []
        for k, item in enumerate(given):
            text = item.get("text", item.get("content")) if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise InputError(
                    f"item {k} must be a string (or an object with 'text'), not {type(item).__name__}",
                    field=self.candidates_field,
                )
            extra = (
                {key: v for key, v in item.items() if key not in ("text", "content")} if isinstance(item, dict) else {}
            )
            found.append({"origin": "record", "position": k, **extra, "text": text})
        return found

    async def _generate(self, record: Record, ctx: StepContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every model x temperature x sample, concurrently; failures are candidates with an error."""
        if not self.models:
            return [], []
        template = self.prompt(ctx, self.prompt_ref)
        messages = template.render(record, self.options)
        jobs = []
        for model in self.models:
            for temperature in self.temperatures:
                params = dict(self.params)
                if temperature is not None:
                    params["temperature"] = temperature
                for sample in range(self.samples):
                    jobs.append((model, params, sample))

        async def one(model: str, params: dict[str, Any], sample: int):
            # Provenance shows the effective settings: the model's defaults (models.yaml) under the step's.
            effective = {**ctx.model(model).config.params, **params}
            entry: dict[str, Any] = {"origin": "generated", "model": model, "params": effective, "sample": sample}
            try:
                completion = await ctx.model(model).chat(messages, sample=sample, **params)
            except ModelError as exc:
                return {**entry, "error": str(exc), "raw": exc.raw}, None
            entry["text"] = completion.text.strip()
            if completion.reasoning and (self.config.keep_reasoning or self.config.judge_sees_reasoning):
                entry["reasoning"] = completion.reasoning  # apart: judges read the text alone unless told otherwise
            return entry, completion

        results = await asyncio.gather(*(one(*job) for job in jobs))
        # Role names the candidate by its place among the generated ones (model, temperature and sample
        # are in its provenance), so two temperatures' sample 0 stay apart.
        calls = [
            {**call_meta(self.name, e["model"], c, template), "role": f"candidate#{k}"}
            for k, (e, c) in enumerate(results)
            if c is not None
        ]
        self.counters["generate_calls"] += len(jobs)
        return [e for e, _ in results], calls

    def _usable(self, candidates: list[dict[str, Any]], template: Any = None) -> list[str | None]:
        """The text to score per candidate, or ``None`` (failed, blank, failing a text check, or a repeat of an
        earlier text). The text checks judge generated candidates only: those given in the record are data."""
        seen: set[str] = set()
        texts: list[str | None] = []
        for candidate in candidates:
            text = candidate.get("text")
            problem = (
                self.sanity.problem(text.strip(), template)
                if candidate.get("origin") == "generated" and isinstance(text, str) and text.strip()
                else None
            )
            if "error" in candidate:
                self.counters["candidates_failed"] += 1
                texts.append(None)
            elif not text or not text.strip():
                candidate["skipped"] = "blank"
                self.counters["candidates_blank"] += 1
                texts.append(None)
            elif problem is not None:
                candidate["skipped"] = problem.counter
                candidate["skipped_detail"] = problem.detail
                self.counters[problem.counter] += 1
                texts.append(None)
            elif text.strip() in seen:
                candidate["skipped"] = "duplicate"
                self.counters["candidates_duplicate"] += 1
                texts.append(None)
            else:
                seen.add(text.strip())
                texts.append(text)
        return texts

    # --- scoring -----------------------------------------------------------------------------------

    def _shown(self, candidates: list[dict[str, Any]], texts: list[str | None]) -> list[str | None]:
        """What the judges read of each usable candidate: its text, or with ``judge_sees_reasoning`` its text
        after its trace (a trajectory: each assistant turn's ``reasoning_content`` before the turn). Lengths,
        duplicates and text checks are still measured on ``texts``, the answers alone."""
        if not self.config.judge_sees_reasoning:
            return texts
        shown: list[str | None] = []
        for candidate, text in zip(candidates, texts):
            messages = candidate.get("messages")
            if text is None:
                shown.append(None)
            elif isinstance(messages, list) and any(
                isinstance(m, dict) and m.get("reasoning_content") for m in messages
            ):
                shown.append(trajectory_text(messages, reasoning=True))
            else:
                shown.append(with_reasoning(text, candidate.get("reasoning")))
        return shown

    def _prompt_messages(self, record: Record) -> list[dict[str, str]]:
        """The conversation up to the answer: system (the record's ``system``), history, the query."""
        try:
            history = normalize_history(record.get("history"))
        except TypeError as exc:
            raise InputError(str(exc), field="history") from None
        if not isinstance(record.get("input"), str):
            raise InputError("needs the query as a string", field="input")
        system = record.get("system")
        messages = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
        return messages + history + [{"role": "user", "content": record["input"]}]

    async def _score(self, record: Record, texts: list[str | None], ctx: StepContext) -> JudgeRun:
        if self.scorer == "pointwise":
            return await judge_pointwise(
                ctx,
                self.prompt(ctx, self.judge_prompt_ref),
                record,
                texts,  # type: ignore[arg-type]
                self._judges,
                self.aspects,
                self.scale,
                self.options,
                self.judge_params,
                self.name,
                self.rationale_chars,
            )
        if self.scorer == "pairwise":
            return await judge_pairwise(
                ctx,
                self.prompt(ctx, self.judge_prompt_ref),
                record,
                texts,  # type: ignore[arg-type]
                self._judges,
                self.options,
                self.judge_params,
                self.name,
                self.rationale_chars,
            )
        run = JudgeRun(scores=[None] * len(texts), judgements=[[] for _ in texts])
        usable = [i for i, t in enumerate(texts) if t is not None]
        prompt = self._prompt_messages(record)
        model = self.judges[0]
        run.calls_made = len(usable)
        try:
            values = await ctx.model(model).reward(
                [prompt + [{"role": "assistant", "content": texts[i]}] for i in usable], **self.judge_params
            )
        except ModelError as exc:
            run.failures = len(usable)
            for i in usable:
                run.judgements[i].append({"judge": model, "error": str(exc), "raw": exc.raw})
            return run
        for i, value in zip(usable, values):
            run.scores[i] = value
            run.judgements[i].append({"judge": model, "reward": value})
        return run

    # --- output ------------------------------------------------------------------------------------

    def _trl_prompt(self, record: Record) -> tuple[Any, bool]:
        """TRL's prompt and whether the pair is conversational (message lists) or standard (strings)."""
        messages = self._prompt_messages(record)
        conversational = self.trl_format == "conversational" or (self.trl_format == "auto" and len(messages) > 1)
        if conversational:
            return messages, True
        if len(messages) > 1:
            raise StepError(
                f"step '{self.name}': trl_format 'standard' cannot carry the record's history or system "
                "prompt; use 'conversational' or 'auto'"
            )
        return record["input"], False

    def _base(self, record: Record) -> Record:
        if self.keep_fields is None:
            return dict(record)
        kept = {k: record[k] for k in self.keep_fields if k in record}
        if "_meta" in record:
            kept["_meta"] = record["_meta"]
        return kept

    def _pair_record(
        self,
        record: Record,
        prompt: Any,
        conversational: bool,
        candidates: list[dict[str, Any]],
        run: JudgeRun,
        chosen: int,
        rejected: int,
        calls: list[dict[str, Any]],
    ) -> Record:
        def source(i: int) -> dict[str, Any]:
            skip = ("text", "messages", "reasoning")
            return {"index": i, **{k: v for k, v in candidates[i].items() if k not in skip}}

        def side(i: int, text: str) -> Any:
            # A candidate that is a whole trajectory (tool_dialogue's `messages`: assistant turns with tool calls,
            # tool results, the answer) is that continuation in a conversational pair; judges read its text.
            messages = candidates[i].get("messages")
            if conversational and isinstance(messages, list) and messages:
                return messages
            return [{"role": "assistant", "content": text}] if conversational else text

        def rationale(i: int) -> list[dict[str, Any]]:
            if self.scorer == "pairwise":  # the judges' words on exactly this pair, in both orders
                return pair_rationales(run, chosen, rejected)
            return run.judgements[i]

        text_c, text_r = candidates[chosen]["text"], candidates[rejected]["text"]
        out = self._base(record)
        out.pop(self.candidates_field or "", None)
        out.update(
            prompt=prompt,
            chosen=side(chosen, text_c),
            rejected=side(rejected, text_r),
            score_chosen=run.scores[chosen],
            score_rejected=run.scores[rejected],
            rationale_chosen=rationale(chosen),
            rationale_rejected=rationale(rejected),
            source_chosen=source(chosen),
            source_rejected=source(rejected),
            length_chosen=len(text_c.strip()),
            length_rejected=len(text_r.strip()),
            length_diff=len(text_c.strip()) - len(text_r.strip()),
            dpo={"scorer": self.scorer, "rule": self.rule, "judges": self.judges, "candidates": len(candidates)},
        )
        for name, i in (("chosen", chosen), ("rejected", rejected)):
            if self.config.keep_reasoning and candidates[i].get("reasoning"):  # each side's trace, for exports
                out[reasoning_field(name)] = candidates[i]["reasoning"]
        if "_meta" in out:
            out["_meta"] = {**out["_meta"], "calls": list(out["_meta"].get("calls", []))}
        for meta in calls:
            add_call_meta(out, meta)
        return out

    async def run(self, record: Record, ctx: StepContext) -> list[Record] | Record | None:
        candidates = self._record_candidates(record)
        generated, calls = await self._generate(record, ctx)
        candidates += generated
        self.counters["candidates"] += len(candidates)
        texts = self._usable(candidates, self.prompt(ctx, self.prompt_ref) if self.models else None)
        usable = sum(t is not None for t in texts)
        need = 1 if self.output == "scores" else self.min_candidates
        if usable < need:
            self.counters["too_few_candidates"] += 1
            raise StepError(
                f"step '{self.name}': {usable} usable candidate(s) of {len(candidates)}, need {need}",
                raw=json.dumps(candidates, ensure_ascii=False)[:20000],
            )
        # Verified before scoring: a record without its reference fails before any judge is paid.
        pools = await self.verification.pools(record, candidates, texts, self.counters) if self.verification else {}
        run = await self._score(record, self._shown(candidates, texts), ctx)
        calls += run.calls
        for key, value in (
            ("judge_calls", run.calls_made),
            ("judge_failures", run.failures),
            ("agreement:judge_pairs_compared", run.judge_pairs_compared),
            ("agreement:judge_pairs_agree", run.judge_pairs_agree),
            ("agreement:orders_compared", run.orders_compared),
            ("agreement:orders_consistent", run.orders_consistent),
        ):
            if value:  # a pointwise run has no order agreement: leave it out rather than report 0 of 0
                self.counters[key] += value
        scored = sum(s is not None for s in run.scores)
        if usable > scored:
            self.counters["candidates_unscored"] += usable - scored
        if scored < need:
            self.counters["too_few_scored"] += 1
            failures = [j for per in run.judgements for j in per if "error" in j]
            raise StepError(
                f"step '{self.name}': {scored} candidate(s) scored of {usable}, need {need}; "
                f"{len(failures)} judgement(s) failed, first: {failures[0]['error'] if failures else '-'}",
                raw=json.dumps(failures, ensure_ascii=False)[:20000],
            )

        if self.output == "scores":
            out = self._base(record)
            out[self.candidates_field or "response_candidates"] = [c.get("text") for c in candidates]
            out[self.scores_field] = run.scores
            out["candidate_sources"] = [
                {k: v for k, v in c.items() if k not in ("text", "reasoning")} for c in candidates
            ]
            if self.config.keep_reasoning and any(c.get("reasoning") for c in candidates):  # in candidate order
                out[reasoning_field(self.candidates_field or "response_candidates")] = [
                    c.get("reasoning") for c in candidates
                ]
            out["candidate_judgements"] = run.judgements
            if self.scorer == "pairwise":
                out["pairwise_verdicts"] = run.pair_records
            for meta in calls:
                add_call_meta(out, meta)
            self.counters["records_scored"] += 1
            return out

        lengths = [len(t.strip()) if t is not None else 0 for t in texts]
        verdict = (lambda c, r: direct_verdict(run, c, r)) if self.scorer == "pairwise" else None
        selection = select_pairs(
            run.scores,
            self.rule,
            margin=self.margin,
            verdict=verdict,
            lengths=lengths,
            length_penalty=self.length_penalty,
            rng=ctx.rng(source_id_of(record), self.name),
            **pools,
        )
        for reason, count in selection.dropped.items():
            self.counters[f"dropped:{reason}"] += count
        if not selection.pairs:
            self.counters["records_without_pair"] += 1
            return []
        prompt, conversational = self._trl_prompt(record)
        outputs = []
        for k, (chosen, rejected) in enumerate(selection.pairs):
            # The calls are paid once per record: the first pair carries them, so token sums stay true.
            outputs.append(
                self._pair_record(
                    record, prompt, conversational, candidates, run, chosen, rejected, calls if k == 0 else []
                )
            )
            diff = lengths[chosen] - lengths[rejected]
            self.counters["pairs_made"] += 1
            self.counters["length:diff_sum"] += diff
            self.counters[
                "length:chosen_longer" if diff > 0 else "length:chosen_shorter" if diff < 0 else "length:same"
            ] += 1
        return outputs

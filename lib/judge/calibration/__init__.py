"""Judge calibration (notebook 02): the judge against the hand-labelled calibration set, its metrics and bias probes.

One job per module; this package only gathers their public names, so `cal.<name>` is the notebook's one namespace:

- `dataset`: read and validate the calibration set, subset it, ask a judge every question
- `metrics`: agreement and calibration per question and overall; how the judge modes agree
- `probes`: the length and relevance probes (texts, runs, summaries)
- `plots`: reliability diagram, threshold sweep, probe figures
- `summary`: the numbers notebook 02 records and the same in plain sentences
- `per_item`: one calibrator per checklist item (Platt or isotonic), cross-validated by text, applied in the score

How notebook 02 (judge calibration) calls it, in order::

    from lib.judge import calibration as cal
    from lib.stats import threshold_sweep

    full = cal.load_calibration_set(rubric_keys=cal.rubric_keys(rubric))          # one row per text
    calib = cal.select_calibration_texts(full, max_texts, seed=seed)              # stratified by kind
    labels = cal.long_labels(calib)                                               # one row per (text, question)
    judged = cal.judge_calibration_set(judge, rubric, calib)                      # p_yes, verdict, flagged per (id, key)
    long = labels.merge(judged, on=["id", "section", "key"])

    # 1 agreement and calibration, per question and overall
    table = cal.metrics_table(long["label"], long["p_yes"], threshold=t, by=long["section"] + "/" + long["key"])
    save_table(table, out / "metrics")                        # lib.eval.tables: metrics.csv, .md, .html
    cal.reliability_diagram(long["label"], long["p_yes"], out / "reliability.png")
    sweep = threshold_sweep(long["label"], long["p_yes"]); cal.plot_threshold_sweep(sweep, out / "threshold_sweep.png")

    # 2 judge modes: hard verdicts are the soft judgements' `verdict` (P(yes) >= threshold); seed mode (the
    #   original's) asks again on the same backend: JudgeEngine(judge.backend, cfg, mode="seed")
    frame = cal.mode_frame(labels, soft=judged, hard=judged, seed=cal.judge_calibration_set(seed_judge, rubric, calib))
    agreement = cal.mode_agreement(frame, threshold=t)

    # 3 bias probes: good answers padded with filler, and the same copy asked about another entity
    length = cal.run_length_probe(judge, rubric["answer"], good, cal.load_probes()["filler_sentences"], pad_levels)
    length_summary = cal.summarize_probe(length, "p_yes", "pad_level")
    relevance = cal.run_relevance_probe(judge, rubric["answer"], cal.relevance_probe_pairs(relevant, pool=answers))
    relevance_summary = cal.summarize_relevance(relevance)

    # per-item calibration, cross-validated by text; saved for the judge rewards and evaluation (per_item.for_run)
    per_item, oof = cal.fit_per_item(long, rubric, method="platt", min_auroc=0.6, weak_items="drop", folds=5)
    per_item.save(out / "per_item_calibration.json"); cal.reliability_before_after(oof, out / "reliability_per_item.png")

    # 4 in words
    summary = cal.calibration_summary(long, agreement, length, relevance, threshold=t)
    cal.save_summary(summary, cal.describe_calibration(summary), out)
"""
from lib.judge.calibration.dataset import (
    OPTIONAL_FIELDS,
    REQUIRED_FIELDS,
    CalibrationError,
    judge_calibration_set,
    label_summary,
    load_calibration_set,
    long_labels,
    rubric_keys,
    select_calibration_texts,
)
from lib.judge.calibration.agreement import LOG_LOSS_EPS, MODES, OVERALL, metrics_table, mode_agreement, mode_frame
from lib.judge.calibration.plots import plot_probe, plot_threshold_sweep, reliability_diagram
from lib.judge.calibration.probes import (
    PROBES_FILE,
    length_probe_texts,
    load_probes,
    one_item_section,
    relevance_probe_pairs,
    run_length_probe,
    run_relevance_probe,
    summarize_probe,
    summarize_relevance,
)
from lib.judge.calibration.summary import calibration_summary, describe_calibration, kappa_words, save_summary
from lib.judge.calibration.per_item import (
    PerItemCalibration,
    fit_per_item,
    per_item_summary,
    reliability_before_after,
)

__all__ = [
    "LOG_LOSS_EPS", "MODES", "OPTIONAL_FIELDS", "OVERALL", "PROBES_FILE", "REQUIRED_FIELDS", "CalibrationError",
    "calibration_summary", "describe_calibration", "judge_calibration_set", "kappa_words", "label_summary",
    "length_probe_texts", "load_calibration_set", "load_probes", "long_labels", "metrics_table", "mode_agreement",
    "mode_frame", "one_item_section", "plot_probe", "plot_threshold_sweep", "relevance_probe_pairs", "reliability_diagram",
    "rubric_keys", "run_length_probe", "run_relevance_probe", "save_summary", "select_calibration_texts",
    "summarize_probe", "summarize_relevance", "PerItemCalibration", "fit_per_item", "per_item_summary",
    "reliability_before_after",
]

"""Score a trained qa model on a SQuAD file, broken down by how many windows each context needs and by
the window that holds the gold answer: shows whether answers deep in long contexts are found.

    python scripts/qa_window_report.py runs/qa-... dev.json [--examples 3]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import nlpkit
from nlpkit.engine.evaluation import predict_features
from nlpkit_tasks.qa.squad import squad_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--examples", type=int, default=3, help="show this many questions answered in window >= 4")
    args = parser.parse_args()

    pipe = nlpkit.load(args.checkpoint)
    task = pipe.task()
    examples = task.read(args.data)
    features = task.encode(examples)
    outputs = predict_features(task, pipe.model, features, args.batch_size)
    predictions = task.decode(examples, features, outputs)

    n_windows: dict[int, int] = defaultdict(int)
    answer_window: dict[int, int] = {}
    for f in features:
        i = f["example_index"]
        n_windows[i] += 1
        if f.get("start_positions", f["cls_index"]) != f["cls_index"] and i not in answer_window:
            answer_window[i] = f["window"]  # the first window holding the whole gold answer

    groups: dict[str, list[int]] = defaultdict(list)
    for i in range(len(examples)):
        n = n_windows[i]
        groups[f"contexts of {'1 window' if n == 1 else '2-3 windows' if n <= 3 else '>3 windows'}"].append(i)
        if n > 3:
            w = answer_window.get(i)
            where = "not inside one window" if w is None else "in window 1-3" if w < 3 else "in window >= 4"
            groups[f"  >3 windows, answer {where}"].append(i)

    report = {"checkpoint": str(pipe.path), "data": args.data, "questions": len(examples), "features": len(features),
              "max_length": task.options.max_length, "doc_stride": task.options.stride,
              "overall": task.score(predictions, examples), "groups": {}}
    for name, idx in sorted(groups.items()):
        s = squad_scores([predictions[i]["answer"] for i in idx],
                         [[a["text"] for a in examples[i]["answers"]] for i in idx], v2=task.no_answer)
        windows = [n_windows[i] for i in idx]
        report["groups"][name.strip()] = {"questions": len(idx), "exact": round(s["exact"], 2), "f1": round(s["f1"], 2),
                                          "windows_min": min(windows), "windows_max": max(windows)}
    deep = [i for i in range(len(examples)) if answer_window.get(i, -1) >= 3 and predictions[i]["answer"]
            == examples[i]["answers"][0]["text"]][: args.examples]
    report["answered_in_window_4_or_later"] = [
        {"id": examples[i]["id"], "question": examples[i]["question"], "windows": n_windows[i],
         "answer_window": answer_window[i] + 1, "context_chars": len(examples[i]["context"]),
         "prediction": predictions[i]} for i in deep]
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

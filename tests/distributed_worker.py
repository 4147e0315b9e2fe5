"""Run by tests/test_distributed.py under torchrun: evaluation of an uneven split on several processes.

Each feature's output is its own index, and every process counts the features it ran, so the test can
check both that the split was uneven and that the gathered outputs hold every feature exactly once.
Usage: python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py N BATCH OUT.json
"""
import json
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from nlpkit.engine.evaluation import predict_features


class CountingTask:
    name = "count"

    def __init__(self) -> None:
        self.ran: list[int] = []

    def feature_length(self, feature: dict) -> int:
        return feature["length"]

    def feature_lengths(self, features: list[dict]) -> list[int]:  # the Task API asks for all lengths at once
        return [self.feature_length(f) for f in features]

    def collate(self, features: list[dict]) -> dict:
        return {"index": torch.tensor([f["index"] for f in features])}

    def predict_batch(self, head, backbone, batch) -> list[int]:
        ran = batch["index"].tolist()
        self.ran.extend(ran)
        return ran


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Linear(1, 1)
        self.heads = torch.nn.ModuleDict({"count": torch.nn.Identity()})


def main() -> None:
    n, batch_size, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    acc = Accelerator(cpu=True)
    task = CountingTask()
    features = [{"index": i, "length": (i * 7) % 13 + 1} for i in range(n)]  # lengths vary: sorted batches
    outputs = predict_features(task, Model(), features, batch_size, acc)
    ran_per_process = gather_object([len(task.ran)])
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump({"processes": acc.num_processes, "ran_per_process": ran_per_process, "outputs": outputs}, f)
    acc.wait_for_everyone()
    acc.end_training()  # tear the process group down: exiting with gloo's threads alive can abort


if __name__ == "__main__":
    main()
